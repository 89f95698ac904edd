// Every OOM kill on the node, from the oom:mark_victim tracepoint (node-wide on purpose: the victim is
// not known in advance). One small event per kill through a ring buffer; a full buffer is counted in
// oom_stats[0], never silent. Sizes: RINGBUF_PAGES (-D, default 8).
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 8
#endif

struct oom_event_t {
    u32 pid;
    u32 uid;
    u64 total_vm_kb;
    u64 anon_rss_kb;
    u64 file_rss_kb;
    u64 shmem_rss_kb;
    u64 ts_ns;
    char comm[16];
};

BPF_RINGBUF_OUTPUT(oom_events, RINGBUF_PAGES);
BPF_ARRAY(oom_stats, u64, 2);  // [0] ring buffer full, [1] kills seen

TRACEPOINT_PROBE(oom, mark_victim) {
    int idx_seen = 1;
    u64 *seen = oom_stats.lookup(&idx_seen);
    if (seen)
        __sync_fetch_and_add(seen, 1);
    struct oom_event_t *ev = oom_events.ringbuf_reserve(sizeof(struct oom_event_t));
    if (!ev) {
        int idx_full = 0;
        u64 *full = oom_stats.lookup(&idx_full);
        if (full)
            __sync_fetch_and_add(full, 1);
        return 0;
    }
    ev->pid = args->pid;
    ev->uid = args->uid;
    ev->total_vm_kb = args->total_vm;
    ev->anon_rss_kb = args->anon_rss;
    ev->file_rss_kb = args->file_rss;
    ev->shmem_rss_kb = args->shmem_rss;
    ev->ts_ns = bpf_ktime_get_ns();
    TP_DATA_LOC_READ_STR(ev->comm, comm, sizeof(ev->comm));
    oom_events.ringbuf_submit(ev, 0);
    return 0;
}
