import java.lang.management.GarbageCollectorMXBean;
import java.lang.management.ManagementFactory;
import java.util.ArrayList;
import java.util.List;

/**
 * A heap leak in a static collection: each step keeps `mib` MiB (64 KiB arrays, below G1's humongous
 * size) and churns eight times as much short-lived garbage, so young collections run while the
 * retained set, the post-GC floor, rises.
 */
public class HeapLeak {
    static final List<byte[]> KEPT = new ArrayList<>();
    static volatile Object sink;

    static void step(int mib) {
        for (int i = 0; i < mib * 16; i++) {
            byte[] b = new byte[64 << 10];
            b[i & 1023] = 1;
            KEPT.add(b);
        }
        for (int i = 0; i < mib * 16 * 8; i++) {
            byte[] g = new byte[64 << 10];
            g[i & 1023] = 1;
            sink = g;
        }
    }

    /** The JVM's own account of stop-the-world collection time (the concurrent-cycle bean of JDK 20+
     * measures concurrent work, not pauses, so it is left out). */
    static String gcTime() {
        long ms = 0, n = 0;
        for (GarbageCollectorMXBean b : ManagementFactory.getGarbageCollectorMXBeans()) {
            if (b.getName().contains("Concurrent")) {
                continue;
            }
            ms += b.getCollectionTime();
            n += b.getCollectionCount();
        }
        return "gctime ms=" + ms + " count=" + n + " wall=" + System.currentTimeMillis();
    }
}
