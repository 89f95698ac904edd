import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;

/** Retains direct ByteBuffers: each step allocates and keeps `mib` MiB off-heap (NMT "Other"). */
public class DirectLeak {
    static final List<ByteBuffer> KEPT = new ArrayList<>();

    static void step(int mib) {
        for (int i = 0; i < mib; i++) {
            ByteBuffer b = ByteBuffer.allocateDirect(1 << 20);
            // allocateDirect zeroes the memory already; write anyway so every page is surely resident.
            for (int off = 0; off < b.capacity(); off += 4096) {
                b.put(off, (byte) 1);
            }
            KEPT.add(b);
        }
    }
}
