import java.io.BufferedReader;
import java.io.InputStreamReader;

/**
 * Test driver: one JVM hosts the four leak programs so tests share a JVM. Reads commands on stdin
 * ("direct 64", "classes 2000", "threads 100", "sawtooth 256", "heapleak 2", "gctime", "sitewarm",
 * "siteunsafe 8", "sitedirect 8", "quit") and answers "ok <cmd>" when the
 * step is done, so the test process decides when memory grows and nothing depends on timing.
 */
public class NwDriver {
    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        System.out.println("ready");
        System.out.flush();
        String line;
        while ((line = in.readLine()) != null) {
            String[] p = line.trim().split("\\s+");
            int n = p.length > 1 ? Integer.parseInt(p[1]) : 1;
            switch (p[0]) {
                case "direct": DirectLeak.step(n); break;
                case "classes": ClassLeak.step(n); break;
                case "threads": ThreadLeak.step(n); break;
                case "sawtooth": HeapSawtooth.step(n); break;
                case "heapleak": HeapLeak.step(n); break;
                case "gctime": System.out.println(HeapLeak.gcTime()); break;
                case "sitewarm": SiteLeak.warm(); break;
                case "siteunsafe": SiteLeak.step(n, false); break;
                case "sitedirect": SiteLeak.step(n, true); break;
                case "quit": return;
                default: System.out.println("unknown " + p[0]); System.out.flush(); continue;
            }
            System.out.println("ok " + p[0]);
            System.out.flush();
        }
    }
}
