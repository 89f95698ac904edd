/** Flat heap sawtooth: each step allocates and drops `mib` MiB of short-lived arrays, then collects. */
public class HeapSawtooth {
    static volatile Object sink;

    static void step(int mib) {
        for (int i = 0; i < mib; i++) {
            byte[] b = new byte[1 << 20];
            b[i & 1023] = 1;
            sink = b;
        }
        sink = null;
        System.gc();
    }
}
