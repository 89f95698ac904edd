import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.List;

/** Leaks classes: each step defines `n` copies of Leaf, each through its own retained classloader. */
public class ClassLeak {
    static final List<Object> KEPT = new ArrayList<>();
    static byte[] leafBytes;

    static final class OneShotLoader extends ClassLoader {
        OneShotLoader() {
            super(null);
        }

        Class<?> define(byte[] b) {
            return defineClass("Leaf", b, 0, b.length);
        }
    }

    static void step(int n) throws Exception {
        if (leafBytes == null) {
            try (InputStream in = ClassLeak.class.getResourceAsStream("/Leaf.class")) {
                ByteArrayOutputStream out = new ByteArrayOutputStream();
                in.transferTo(out);
                leafBytes = out.toByteArray();
            }
        }
        for (int i = 0; i < n; i++) {
            Class<?> c = new OneShotLoader().define(leafBytes);
            // Linking and initialising makes the VM build the method data it keeps in metaspace.
            KEPT.add(c.getDeclaredConstructor().newInstance());
        }
    }
}
