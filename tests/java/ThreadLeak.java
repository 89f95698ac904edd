import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.locks.LockSupport;

/** Leaks parked threads: each step starts `n` threads that touch some stack, then park forever. */
public class ThreadLeak {
    static final List<Thread> KEPT = new ArrayList<>();

    static long deep(int depth) {
        long[] pad = new long[4];
        pad[depth & 3] = depth;
        return depth == 0 ? pad[0] : deep(depth - 1) + pad[depth & 3];
    }

    static void step(int n) throws InterruptedException {
        CountDownLatch started = new CountDownLatch(n);
        for (int i = 0; i < n; i++) {
            Thread t = new Thread(() -> {
                deep(1500);
                started.countDown();
                while (true) {
                    LockSupport.park();
                }
            }, "leaked-" + KEPT.size());
            t.setDaemon(true);
            t.start();
            KEPT.add(t);
        }
        started.await();
    }
}
