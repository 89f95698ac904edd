// Allocations made inside libstdc++ itself (issue 13): std::string's buffers are allocated by
// _M_create and freed by _M_dispose/_M_mutate in libstdc++.so, through its own GOT entries for
// operator new/delete, not the program's. "go N LEN": keeps N strings of LEN chars (kept_strings)
// and makes and drops 4 N more, growing some through append (libstdc++'s _M_mutate frees the old
// buffer). Replies "done leaked=<bytes of kept buffers>". Also "rarray N": keeps N blocks from
// reallocarray(NULL, 100, 40) (glibc's reallocarray ends in realloc), "done leaked=<bytes>".
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static std::vector<std::string> *kept = new std::vector<std::string>;
static std::vector<void *> *blocks = new std::vector<void *>;

__attribute__((noinline)) static std::size_t kept_strings(long n, std::size_t len)
{
    kept->reserve(kept->size() + n);
    std::size_t total = 0;
    for (long i = 0; i < n; i++) {
        kept->emplace_back(len, static_cast<char>('a' + i % 26));
        total += len + 1;
    }
    return total;
}

__attribute__((noinline)) static void churn_strings(long n, std::size_t len)
{
    for (long i = 0; i < n; i++) {
        std::string s(len, 'z');
        s.append(len, 'y');  // reallocates inside libstdc++ and frees the first buffer there
        if (s.size() != 2 * len)
            std::abort();
    }
}

__attribute__((noinline)) static std::size_t array_blocks(long n)
{
    for (long i = 0; i < n; i++) {
        void *p = reallocarray(nullptr, 100, 40);
        if (!p)
            std::abort();
        std::memset(p, 1, 4000);
        blocks->push_back(p);
    }
    return static_cast<std::size_t>(n) * 4000;
}

int main()
{
    char line[256];
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    std::printf("ready\n");
    while (std::fgets(line, sizeof(line), stdin)) {
        long n = 0, len = 0;
        if (std::sscanf(line, "go %ld %ld", &n, &len) == 2) {
            std::size_t leaked = kept_strings(n, static_cast<std::size_t>(len));
            churn_strings(4 * n, static_cast<std::size_t>(len));
            std::printf("done leaked=%zu\n", leaked);
        } else if (std::sscanf(line, "rarray %ld", &n) == 1) {
            std::printf("done leaked=%zu\n", array_blocks(n));
        } else if (std::strncmp(line, "quit", 4) == 0) {
            return 0;
        }
    }
    return 0;
}
