// C++ allocation-site target (issue 3): operator new/delete instead of malloc/free, names that need
// demangling. Same stdin protocol as leaky_sites.c: "go N" -> "done leaked=<bytes> allocs=<n>".
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace cache {

struct Node {
    Node *next;
    char *data;
    std::size_t len;
};

class Cache {
public:
    __attribute__((noinline)) std::size_t insert(std::size_t len)
    {
        Node *n = new Node;
        n->data = new char[len];
        std::memset(n->data, 0x5a, len);
        n->len = len;
        n->next = head_;
        head_ = n;
        return sizeof(Node) + len;
    }

private:
    Node *head_ = nullptr;
};

}  // namespace cache

static unsigned long rng = 88172645463325252UL;
static unsigned long next_rand() { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

__attribute__((noinline)) static std::size_t churn_objects(int n)
{
    std::size_t total = 0;
    for (int i = 0; i < n; i++) {
        std::size_t len = 16 + next_rand() % 2048;
        char *p = new char[len];
        p[0] = static_cast<char>(i);
        auto *s = new std::string(p, 1);
        total += len;
        delete s;
        delete[] p;
    }
    return total;
}

int main()
{
    static cache::Cache c;
    char line[128];
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    std::printf("ready\n");
    while (std::fgets(line, sizeof(line), stdin)) {
        long n = 0;
        if (std::sscanf(line, "go %ld", &n) == 1) {
            std::size_t leaked = 0;
            for (long i = 0; i < n; i++) {
                leaked += c.insert(256 + next_rand() % 4096);
                churn_objects(10);
            }
            std::printf("done leaked=%zu allocs=%ld\n", leaked, n * 2);
        } else if (std::strncmp(line, "quit", 4) == 0) {
            return 0;
        }
    }
    return 0;
}
