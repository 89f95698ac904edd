import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;

/**
 * Leaks NIO direct buffers at a steady rate until killed: the rising `direct` floor a soak run must fail on.
 * usage: java -XX:NativeMemoryTracking=summary SoakDirectLeak MIB_PER_S
 * Every buffer is 256 KiB, filled so its pages are resident, and kept reachable forever.
 * Prints READY once started.
 */
public final class SoakDirectLeak {
    private static final int CHUNK = 256 * 1024;

    public static void main(String[] args) throws InterruptedException {
        double mibPerS = args.length > 0 ? Double.parseDouble(args[0]) : 2.0;
        long periodNs = (long) (CHUNK / (mibPerS * 1024 * 1024) * 1e9);
        List<ByteBuffer> kept = new ArrayList<>();
        byte[] fill = new byte[CHUNK];
        java.util.Arrays.fill(fill, (byte) 0x5a);
        System.out.println("READY");
        System.out.flush();
        long next = System.nanoTime();
        while (true) {
            ByteBuffer b = ByteBuffer.allocateDirect(CHUNK);
            b.put(fill);
            kept.add(b);
            next += periodNs;
            long wait = next - System.nanoTime();
            if (wait > 0) {
                Thread.sleep(wait / 1_000_000, (int) (wait % 1_000_000));
            }
        }
    }
}
