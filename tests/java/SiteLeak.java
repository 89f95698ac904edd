import java.lang.reflect.Field;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import sun.misc.Unsafe;

/**
 * Native memory leaked from named Java methods, for the Java-frame tests: `leakUnsafe` keeps
 * Unsafe.allocateMemory blocks, `leakDirect` keeps direct ByteBuffers. `warm` calls both paths
 * thousands of times on tiny blocks that it frees again, so the JIT has compiled them (unless -Xint).
 */
public class SiteLeak {
    static final Unsafe U = unsafe();
    static final List<Object> KEPT = new ArrayList<>();

    static Unsafe unsafe() {
        try {
            Field f = Unsafe.class.getDeclaredField("theUnsafe");
            f.setAccessible(true);
            return (Unsafe) f.get(null);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException(e);
        }
    }

    static long leakUnsafe(int bytes) {
        long p = U.allocateMemory(bytes);
        U.setMemory(p, bytes, (byte) 1);
        return p;
    }

    static ByteBuffer leakDirect(int bytes) {
        ByteBuffer b = ByteBuffer.allocateDirect(bytes);
        b.put(0, (byte) 1);
        return b;
    }

    static void warm() {
        for (int i = 0; i < 20000; i++) {
            U.freeMemory(leakUnsafe(16));
            leakDirect(16);
        }
        System.gc();
    }

    /** n blocks of 16 KiB from each leaking method. */
    static void step(int n, boolean direct) {
        for (int i = 0; i < n; i++) {
            if (direct) {
                KEPT.add(leakDirect(16 << 10));
            } else {
                KEPT.add(leakUnsafe(16 << 10));
            }
        }
    }
}
