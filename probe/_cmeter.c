/* The probe's C parts: the flow table (probe/meter.py FlowMeter's semantics, packet for packet),
 * the classic pcap record walk and the Ethernet/IP decoder (probe/fastpath.py's rules, at the end).
 *
 * Plain C99 and libc only, loaded with ctypes by probe/cmeter.py (no Python or numpy headers, so
 * a Raspberry Pi needs only gcc and libc6-dev to build it). The docstring of probe/meter.py is
 * the specification; the names below follow it (pair, direction, closed, moved, ...).
 *
 * Table order. FlowMeter keeps its pairs in a dict whose order is insertion order, and a pair
 * "moves" by being deleted and inserted again. Eviction takes the oldest pair and the idle scan
 * walks from the oldest, stopping at the first pair that moved recently, so which pairs end
 * depends on that order: here it is a doubly-linked list (a new pair is appended, a move
 * unlinks and appends), beside an open-addressing hash index (linear probing, load <= 0.5,
 * backward-shift deletion) over a pool of max_pairs pairs.
 *
 * Ended pairs are copied, with their end reason, into an output array that Python drains after
 * each call and turns into Flow records with FlowMeter's own code.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_ACK 0x10
#define PROTO_TCP 6
#define MAC_SRC 1
#define MAC_DST 2
#define CM_ABI 4
#define AHEAD 16 /* packets looked up ahead of the one metered (a power of two) */
#ifdef __GNUC__
#define PREFETCH(address) __builtin_prefetch(address)
#else
#define PREFETCH(address) ((void)(address))
#endif

/* end reasons (probe/cmeter.py maps them to hostflow.records' strings); 0: not closed */
enum { R_NONE = 0, R_IDLE, R_ACTIVE, R_FIN, R_RST, R_EVICTED, R_FLUSH };

typedef struct {
    int64_t packets, bytes, flags, first, last, tos, vlan;
    uint64_t smac, dmac;
    int64_t macs; /* MAC_SRC | MAC_DST: the first packet had that address */
} cm_dir;

/* One pair, also the output record: every field 8 bytes wide (probe/cmeter.py reads it with struct). */
typedef struct {
    uint64_t a_hi, a_lo, b_hi, b_lo; /* lower and higher address; IPv4: the address in *_lo */
    int64_t proto, alen, port_a, port_b;
    int64_t version, start, last, moved, first_dir, syn_dir, fins, closed, reason;
    cm_dir d[2];
} cm_flow;

typedef struct {
    cm_flow f;
    uint64_t hash;
    int32_t prev, next; /* table order; in the free list, next only */
} cm_pair;

typedef struct {
    int64_t max_pairs, idle_us, active_us, grace_us, granularity_us;
    int64_t last_room_scan;
    int64_t count;
    cm_pair *pool;
    int32_t used, free_head;
    int32_t *slots;
    uint64_t mask;
    int32_t head, tail;
    cm_flow *out;
    int64_t out_count, out_cap;
    int failed; /* an output allocation failed: records were lost */
} cm_table;

int cm_abi(void) { return CM_ABI; }
int64_t cm_record_size(void) { return (int64_t)sizeof(cm_flow); }

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 31;
    return h;
}

static uint64_t key_hash(int64_t alen, int64_t proto, uint64_t a_hi, uint64_t a_lo, int64_t port_a, uint64_t b_hi,
                         uint64_t b_lo, int64_t port_b) {
    uint64_t h = 0x9E3779B97F4A7C15ULL;
    h = mix(h, (uint64_t)alen << 16 ^ (uint64_t)proto);
    h = mix(h, (uint64_t)port_a << 32 ^ (uint64_t)port_b);
    h = mix(h, a_hi);
    h = mix(h, a_lo);
    h = mix(h, b_hi);
    h = mix(h, b_lo);
    h *= 0x94D049BB133111EBULL;
    return h ^ (h >> 29);
}

void cm_free(cm_table *t) {
    if (!t)
        return;
    free(t->pool);
    free(t->slots);
    free(t->out);
    free(t);
}

cm_table *cm_new(int64_t max_pairs, int64_t idle_us, int64_t active_us, int64_t grace_us, int64_t granularity_us) {
    if (max_pairs < 1 || max_pairs > INT32_MAX / 4)
        return NULL;
    cm_table *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    uint64_t size = 16;
    while (size < 2 * (uint64_t)max_pairs)
        size <<= 1;
    /* calloc: pages of the pool are only touched as pairs are used */
    t->pool = calloc((size_t)max_pairs, sizeof(cm_pair));
    t->slots = malloc(size * sizeof(int32_t));
    t->out_cap = 1024;
    t->out = malloc((size_t)t->out_cap * sizeof(cm_flow));
    if (!t->pool || !t->slots || !t->out) {
        cm_free(t);
        return NULL;
    }
    memset(t->slots, 0xFF, size * sizeof(int32_t));
    t->mask = size - 1;
    t->max_pairs = max_pairs;
    t->idle_us = idle_us;
    t->active_us = active_us;
    t->grace_us = grace_us;
    t->granularity_us = granularity_us;
    t->last_room_scan = -1;
    t->free_head = -1;
    t->head = t->tail = -1;
    return t;
}

/* ------------------------------------------------------------------ index and order */

static int same_key(const cm_flow *f, int64_t alen, int64_t proto, uint64_t a_hi, uint64_t a_lo, int64_t port_a,
                    uint64_t b_hi, uint64_t b_lo, int64_t port_b) {
    return f->a_lo == a_lo && f->b_lo == b_lo && f->port_a == port_a && f->port_b == port_b && f->proto == proto &&
           f->a_hi == a_hi && f->b_hi == b_hi && f->alen == alen;
}

static void slot_delete(cm_table *t, uint64_t hole) {
    uint64_t mask = t->mask, j = hole;
    for (;;) {
        j = (j + 1) & mask;
        int32_t p = t->slots[j];
        if (p < 0)
            break;
        uint64_t home = t->pool[p].hash & mask;
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            t->slots[hole] = p;
            hole = j;
        }
    }
    t->slots[hole] = -1;
}

static void unlink_pair(cm_table *t, int32_t p) {
    cm_pair *q = &t->pool[p];
    if (q->prev >= 0)
        t->pool[q->prev].next = q->next;
    else
        t->head = q->next;
    if (q->next >= 0)
        t->pool[q->next].prev = q->prev;
    else
        t->tail = q->prev;
}

static void append_pair(cm_table *t, int32_t p) {
    cm_pair *q = &t->pool[p];
    q->prev = t->tail;
    q->next = -1;
    if (t->tail >= 0)
        t->pool[t->tail].next = p;
    else
        t->head = p;
    t->tail = p;
}

static void output(cm_table *t, const cm_flow *f, int64_t reason) {
    if (t->out_count == t->out_cap) {
        int64_t cap = t->out_cap * 2;
        cm_flow *grown = realloc(t->out, (size_t)cap * sizeof(cm_flow));
        if (!grown) {
            t->failed = 1;
            return;
        }
        t->out = grown;
        t->out_cap = cap;
    }
    cm_flow *rec = &t->out[t->out_count++];
    *rec = *f;
    rec->reason = reason;
}

/* The pair leaves the table (FlowMeter._end) and goes to the output with ``reason``. */
static void end_pair(cm_table *t, int32_t p, int64_t reason) {
    cm_pair *q = &t->pool[p];
    output(t, &q->f, reason);
    uint64_t i = q->hash & t->mask;
    while (t->slots[i] != p)
        i = (i + 1) & t->mask;
    slot_delete(t, i);
    unlink_pair(t, p);
    q->next = t->free_head;
    t->free_head = p;
    t->count--;
}

static int64_t ended(const cm_pair *q, int64_t otherwise) { return q->f.closed ? q->f.closed : otherwise; }

/* ------------------------------------------------------------------ expiry */

/* FlowMeter.expire: the pairs idle longer than the idle timeout, oldest first. Comparisons are
 * written as differences (now - last > idle, not last < now - idle) so no value can overflow. */
void cm_expire(cm_table *t, int64_t now) {
    int32_t p = t->head;
    while (p >= 0) {
        cm_pair *q = &t->pool[p];
        int32_t next = q->next;
        if (now - q->f.moved <= t->idle_us)
            break;
        if (now - q->f.last > t->idle_us)
            end_pair(t, p, ended(q, R_IDLE));
        p = next;
    }
}

static void make_room(cm_table *t, int64_t now) {
    if (now != t->last_room_scan) {
        t->last_room_scan = now;
        cm_expire(t, now);
    }
    while (t->count >= t->max_pairs)
        end_pair(t, t->head, R_EVICTED);
}

/* End up to ``limit`` pairs, oldest first (FlowMeter.flush); returns how many are left. */
int64_t cm_flush(cm_table *t, int64_t limit) {
    while (t->head >= 0 && limit-- > 0)
        end_pair(t, t->head, ended(&t->pool[t->head], R_FLUSH));
    return t->count;
}

/* Copy every pair, oldest first, to the output (reason R_NONE) without ending it. */
void cm_dump(cm_table *t) {
    for (int32_t p = t->head; p >= 0; p = t->pool[p].next)
        output(t, &t->pool[p].f, R_NONE);
}

/* ------------------------------------------------------------------ per packet */

static int32_t new_pair(cm_table *t, uint64_t h, int64_t alen, int64_t proto, uint64_t a_hi, uint64_t a_lo,
                        int64_t port_a, uint64_t b_hi, uint64_t b_lo, int64_t port_b, int64_t ts, int64_t version,
                        int64_t side) {
    if (t->count >= t->max_pairs)
        make_room(t, ts);
    int32_t p;
    if (t->free_head >= 0) {
        p = t->free_head;
        t->free_head = t->pool[p].next;
    } else {
        p = t->used++;
    }
    cm_pair *q = &t->pool[p];
    memset(q, 0, sizeof *q);
    cm_flow *f = &q->f;
    f->a_hi = a_hi;
    f->a_lo = a_lo;
    f->b_hi = b_hi;
    f->b_lo = b_lo;
    f->proto = proto;
    f->alen = alen;
    f->port_a = port_a;
    f->port_b = port_b;
    f->version = version;
    f->start = f->last = f->moved = ts;
    f->first_dir = side;
    f->syn_dir = -1;
    q->hash = h;
    uint64_t i = h & t->mask;
    while (t->slots[i] >= 0)
        i = (i + 1) & t->mask;
    t->slots[i] = p;
    append_pair(t, p);
    t->count++;
    return p;
}

/* FlowMeter's key: the lower (address, port) first, comparing addresses as bytes, then ports. */
typedef struct {
    uint64_t a_hi, a_lo, b_hi, b_lo, hash;
    int64_t port_a, port_b, side;
} cm_key;

static void make_key(cm_key *k, int64_t alen, int64_t proto, uint64_t s_hi, uint64_t s_lo, uint64_t d_hi,
                     uint64_t d_lo, int64_t sport, int64_t dport) {
    if (s_hi < d_hi || (s_hi == d_hi && (s_lo < d_lo || (s_lo == d_lo && sport <= dport)))) {
        k->a_hi = s_hi, k->a_lo = s_lo, k->port_a = sport, k->b_hi = d_hi, k->b_lo = d_lo, k->port_b = dport;
        k->side = 0;
    } else {
        k->a_hi = d_hi, k->a_lo = d_lo, k->port_a = dport, k->b_hi = s_hi, k->b_lo = s_lo, k->port_b = sport;
        k->side = 1;
    }
    k->hash = key_hash(alen, proto, k->a_hi, k->a_lo, k->port_a, k->b_hi, k->b_lo, k->port_b);
}

static void add_keyed(cm_table *t, const cm_key *k, int64_t ts, int64_t vlan, int64_t version, int64_t proto,
                      int64_t alen, int64_t flags, int64_t tos, int64_t nbytes, uint64_t smac, uint64_t dmac,
                      int64_t macs) {
    uint64_t a_hi = k->a_hi, a_lo = k->a_lo, b_hi = k->b_hi, b_lo = k->b_lo, h = k->hash;
    int64_t port_a = k->port_a, port_b = k->port_b, side = k->side;
    int32_t p = -1;
    for (uint64_t i = h & t->mask;; i = (i + 1) & t->mask) {
        int32_t at = t->slots[i];
        if (at < 0)
            break;
        cm_pair *q = &t->pool[at];
        if (q->hash == h && same_key(&q->f, alen, proto, a_hi, a_lo, port_a, b_hi, b_lo, port_b)) {
            p = at;
            break;
        }
    }
    if (p >= 0) {
        cm_pair *q = &t->pool[p];
        if (ts - q->f.last > t->idle_us) {
            end_pair(t, p, ended(q, R_IDLE));
            p = -1;
        } else if (ts - q->f.start > t->active_us) {
            int64_t first_dir = q->f.first_dir, syn_dir = q->f.syn_dir;
            end_pair(t, p, ended(q, R_ACTIVE));
            p = new_pair(t, h, alen, proto, a_hi, a_lo, port_a, b_hi, b_lo, port_b, ts, version, side);
            t->pool[p].f.first_dir = first_dir;
            t->pool[p].f.syn_dir = syn_dir;
        } else if (q->f.closed && (ts - q->f.last > t->grace_us || (flags & (TH_SYN | TH_ACK)) == TH_SYN)) {
            end_pair(t, p, q->f.closed);
            p = -1;
        } else if (ts - q->f.moved > t->granularity_us) {
            unlink_pair(t, p);
            append_pair(t, p);
            q->f.moved = ts;
        }
    }
    if (p < 0)
        p = new_pair(t, h, alen, proto, a_hi, a_lo, port_a, b_hi, b_lo, port_b, ts, version, side);
    cm_flow *f = &t->pool[p].f;
    cm_dir *d = &f->d[side];
    if (d->packets) {
        d->packets++;
        d->bytes += nbytes;
        d->flags |= flags;
        if (ts > d->last)
            d->last = ts;
        else if (ts < d->first)
            d->first = ts;
    } else {
        d->packets = 1;
        d->bytes = nbytes;
        d->flags = flags;
        d->first = d->last = ts;
        d->tos = tos;
        d->vlan = vlan;
        d->smac = macs & MAC_SRC ? smac : 0;
        d->dmac = macs & MAC_DST ? dmac : 0;
        d->macs = macs & (MAC_SRC | MAC_DST);
    }
    if (ts > f->last)
        f->last = ts;
    else if (ts < f->start)
        f->start = ts;
    if (proto == PROTO_TCP && (flags & (TH_FIN | TH_SYN | TH_RST))) {
        if ((flags & TH_SYN) && f->syn_dir < 0)
            f->syn_dir = (flags & TH_ACK) ? 1 - side : side;
        if (flags & TH_RST) {
            f->closed = R_RST;
        } else if (flags & TH_FIN) {
            f->fins |= 1 << side;
            if (f->fins == 3 && !f->closed)
                f->closed = R_FIN;
        }
    }
}

/* FlowMeter.add's arguments, packed by probe/cmeter.py (struct "<11q16s16s8s8s"): addresses and MACs
 * as bytes, big-endian, from the start of their field (alen: 4 or 16, the addresses' length, so
 * their family as in FlowMeter's key; macs: MAC_SRC | MAC_DST, the MACs that are not b""). */
typedef struct {
    int64_t ts, vlan, version, proto, alen, sport, dport, flags, tos, nbytes, macs;
    uint8_t src[16], dst[16], smac[8], dmac[8];
} cm_packet;

int64_t cm_packet_size(void) { return (int64_t)sizeof(cm_packet); }

static uint64_t big_endian(const uint8_t *bytes, int count) {
    uint64_t value = 0;
    for (int i = 0; i < count; i++)
        value = value << 8 | bytes[i];
    return value;
}

/* FlowMeter.add for each of ``count`` packets, in order. */
void cm_add_packed(cm_table *t, const cm_packet *packets, int64_t count) {
    cm_key k;
    for (const cm_packet *p = packets; p < packets + count; p++) {
        int wide = p->alen == 16;
        uint64_t s_hi = wide ? big_endian(p->src, 8) : 0, s_lo = wide ? big_endian(p->src + 8, 8) : big_endian(p->src, 4);
        uint64_t d_hi = wide ? big_endian(p->dst, 8) : 0, d_lo = wide ? big_endian(p->dst + 8, 8) : big_endian(p->dst, 4);
        make_key(&k, p->alen, p->proto, s_hi, s_lo, d_hi, d_lo, p->sport, p->dport);
        add_keyed(t, &k, p->ts, p->vlan, p->version, p->proto, p->alen, p->flags, p->tos, p->nbytes,
                  big_endian(p->smac, 6), big_endian(p->dmac, 6), p->macs);
    }
}

/* Columns of decoded packets (probe.fastpath.Columns), in this order. */
enum { C_TS, C_VLAN, C_VERSION, C_PROTO, C_SPORT, C_DPORT, C_FLAGS, C_TOS, C_NBYTES, C_SRC_HI, C_SRC_LO, C_DST_HI,
       C_DST_LO, C_SMAC, C_DMAC, C_MACS, C_COUNT };
enum { S_POS, S_IP_POS, S_NEXT_SCAN, S_HAS_NEXT_SCAN, S_SCANS, S_COUNT };

/* The packets 0..n-1 of ``cols`` from state[S_POS] on: those listed in ``ip`` (ascending) are metered,
 * and every packet drives the idle scan clock as probe.pipeline's per-packet loop does (the first
 * sets the next scan a scan interval later; one at or past it expires pairs at its time). Stops
 * early once the output holds ``out_limit`` records; state says where to go on. Returns 0, or -1
 * if an output allocation failed. */
int cm_add_columns(cm_table *t, void *const *cols, int64_t n, const int64_t *ip, int64_t nip, int64_t *state,
                   int64_t scan_us, int64_t out_limit) {
    const int64_t *ts = cols[C_TS], *vlan = cols[C_VLAN], *version = cols[C_VERSION], *proto = cols[C_PROTO];
    const int64_t *sport = cols[C_SPORT], *dport = cols[C_DPORT], *flags = cols[C_FLAGS], *tos = cols[C_TOS];
    const int64_t *nbytes = cols[C_NBYTES], *macs = cols[C_MACS];
    const uint64_t *src_hi = cols[C_SRC_HI], *src_lo = cols[C_SRC_LO], *dst_hi = cols[C_DST_HI];
    const uint64_t *dst_lo = cols[C_DST_LO], *smac = cols[C_SMAC], *dmac = cols[C_DMAC];
    int64_t pos = state[S_POS], ip_pos = state[S_IP_POS], next_scan = state[S_NEXT_SCAN];
    int64_t has_next_scan = state[S_HAS_NEXT_SCAN], scans = state[S_SCANS];
    cm_key k;
    uint64_t ahead[AHEAD];
    for (int64_t j = ip_pos; j < ip_pos + AHEAD && j < nip; j++) {
        int64_t i = ip[j];
        make_key(&k, version[i] == 4 ? 4 : 16, proto[i], src_hi[i], src_lo[i], dst_hi[i], dst_lo[i], sport[i], dport[i]);
        ahead[j % AHEAD] = k.hash;
        PREFETCH(&t->slots[k.hash & t->mask]);
    }
    while (pos < n) {
        if (ip_pos < nip && ip[ip_pos] == pos) {
            int64_t i = pos;
            /* memory for later packets is asked for now: their slot, then their pair, so the misses overlap */
            int64_t j = ip_pos + AHEAD;
            if (j < nip) {
                int64_t m = ip[j];
                make_key(&k, version[m] == 4 ? 4 : 16, proto[m], src_hi[m], src_lo[m], dst_hi[m], dst_lo[m], sport[m],
                         dport[m]);
                ahead[j % AHEAD] = k.hash;
                PREFETCH(&t->slots[k.hash & t->mask]);
            }
            if (ip_pos + AHEAD / 2 < nip) {
                int32_t at = t->slots[ahead[(ip_pos + AHEAD / 2) % AHEAD] & t->mask];
                if (at >= 0) {
                    const char *pair = (const char *)&t->pool[at];
                    for (size_t line = 0; line < sizeof(cm_pair); line += 64)
                        PREFETCH(pair + line);
                }
            }
            int64_t alen = version[i] == 4 ? 4 : 16;
            make_key(&k, alen, proto[i], src_hi[i], src_lo[i], dst_hi[i], dst_lo[i], sport[i], dport[i]);
            add_keyed(t, &k, ts[i], vlan[i], version[i], proto[i], alen, flags[i], tos[i], nbytes[i], smac[i], dmac[i],
                      macs[i]);
            ip_pos++;
        }
        int64_t now = ts[pos];
        if (!has_next_scan) {
            next_scan = now + scan_us;
            has_next_scan = 1;
        } else if (now >= next_scan) {
            cm_expire(t, now);
            next_scan = now + scan_us;
            scans++;
        }
        pos++;
        if (t->out_count >= out_limit)
            break;
    }
    state[S_POS] = pos;
    state[S_IP_POS] = ip_pos;
    state[S_NEXT_SCAN] = next_scan;
    state[S_HAS_NEXT_SCAN] = has_next_scan;
    state[S_SCANS] = scans;
    return t->failed ? -1 : 0;
}

/* ------------------------------------------------------------------ what Python reads */

int64_t cm_count(const cm_table *t) { return t->count; }
int64_t cm_last_room_scan(const cm_table *t) { return t->last_room_scan; }
int cm_failed(const cm_table *t) { return t->failed; }
int64_t cm_out_count(const cm_table *t) { return t->out_count; }
const cm_flow *cm_out_data(const cm_table *t) { return t->out; }
void cm_out_clear(cm_table *t) { t->out_count = 0; }

/* ------------------------------------------------------------------ the pcap record walk */

static uint32_t u32_at(const uint8_t *at, int big) {
    if (big)
        return (uint32_t)at[0] << 24 | (uint32_t)at[1] << 16 | (uint32_t)at[2] << 8 | at[3];
    return (uint32_t)at[3] << 24 | (uint32_t)at[2] << 16 | (uint32_t)at[1] << 8 | at[0];
}

/* The records of a classic pcap buffer (probe.fastpath.PcapChunks), from its start: each complete
 * record's data offset, time (µs: seconds * 10^6 + the fraction, nanoseconds divided by 1000 when
 * frac_div is 1000) and captured length, at most max_out of them. Returns how many; *used: the bytes
 * they take; *status: 0 the walk reached the buffer's end or max_out, 1 a header or record runs past
 * the end, 2 a record longer than max_record (the caller words the error). */
int64_t cm_walk_pcap(const uint8_t *buf, int64_t length, int big, int64_t frac_div, int64_t max_record,
                     int64_t *starts, int64_t *ts, int64_t *caplen, int64_t max_out, int64_t *used,
                     int64_t *status) {
    int64_t offset = 0, count = 0;
    *status = 0;
    while (count < max_out && offset < length) {
        if (offset + 16 > length) {
            *status = 1;
            break;
        }
        const uint8_t *header = buf + offset;
        int64_t captured = u32_at(header + 8, big);
        if (captured > max_record) {
            *status = 2;
            break;
        }
        if (offset + 16 + captured > length) {
            *status = 1;
            break;
        }
        int64_t frac = u32_at(header + 4, big);
        starts[count] = offset + 16;
        ts[count] = (int64_t)u32_at(header, big) * 1000000 + (frac_div == 1 ? frac : frac / 1000);
        caplen[count] = captured;
        count++;
        offset += 16 + captured;
    }
    *used = offset;
    return count;
}

/* The chain of pcapng enhanced packet blocks (little-endian) from ``offset`` (probe.fastpath
 * PcapngChunks._epb_run's loop): the offsets of up to max_out consecutive blocks of type 6 whose
 * first 32 bytes lie within ``end``, each found from the one before by its length; it stops at
 * another block type and after a length below 32. Every other check is the caller's. */
int64_t cm_chain_epb(const uint8_t *u8, int64_t end, int64_t offset, int64_t *out, int64_t max_out) {
    int64_t at = offset, count = 0;
    while (count < max_out && at + 32 <= end) {
        if (u32_at(u8 + at, 0) != 6)
            break;
        out[count++] = at;
        int64_t length = u32_at(u8 + at + 4, 0);
        if (length < 32)
            break;
        at += length;
    }
    return count;
}

/* ------------------------------------------------------------------ the Ethernet decoder */

static int64_t be16(const uint8_t *at) { return (int64_t)at[0] << 8 | at[1]; }

/* Decoded columns (probe.fastpath.Columns) the decoder fills, in this order. */
enum { D_KIND, D_VERSION, D_PROTO, D_SPORT, D_DPORT, D_FLAGS, D_TOS, D_VLAN, D_NBYTES, D_MACS, D_SRC_HI, D_SRC_LO,
       D_DST_HI, D_DST_LO, D_SMAC, D_DMAC, D_PAY_START, D_PAY_END, D_FAST, D_COUNT };

/* probe.fastpath._decode_ethernet + _decode_ip, a frame at a time and with the same rules: Ethernet
 * with at most one VLAN tag, IPv4 without options or fragments, IPv6 without extension headers, TCP,
 * UDP, ICMP and other protocols. A frame these rules cover gets its fields and fast = 1; a frame whose
 * Ethernet type is not one the exact decoder knows gets kind = KIND_NON_IP; every other frame is left
 * alone (kind stays KIND_ERROR) for probe.decode, which also words the problems. Frames are read only
 * when ``head`` bytes from their start lie inside the buffer, so no read passes its end. */
void cm_decode_ethernet(const uint8_t *u8, int64_t size, const int64_t *data, const int64_t *caplens, int64_t n,
                        int64_t head, void *const *out) {
    int8_t *kind = out[D_KIND], *fast = out[D_FAST];
    int64_t *version = out[D_VERSION], *proto_out = out[D_PROTO], *sport = out[D_SPORT], *dport = out[D_DPORT];
    int64_t *flags = out[D_FLAGS], *tos_out = out[D_TOS], *vlan = out[D_VLAN], *nbytes = out[D_NBYTES];
    int64_t *macs = out[D_MACS], *pay_start = out[D_PAY_START], *pay_end = out[D_PAY_END];
    uint64_t *src_hi = out[D_SRC_HI], *src_lo = out[D_SRC_LO], *dst_hi = out[D_DST_HI], *dst_lo = out[D_DST_LO];
    uint64_t *smac = out[D_SMAC], *dmac = out[D_DMAC];
    if (size < head || head < 18 + 40 + 20)
        return;
    for (int64_t i = 0; i < n; i++) {
        int64_t base = data[i], caplen = caplens[i];
        if (base < 0 || base + head > size)
            continue;
        const uint8_t *f = u8 + base;
        int64_t etype = be16(f + 12);
        int tagged = etype == 0x8100 || etype == 0x88A8 || etype == 0x9100 || etype == 0x9200;
        int64_t inner = tagged ? be16(f + 16) : etype;
        if (caplen < 14 || (tagged && caplen < 18))
            continue;
        if (inner != 0x0800 && inner != 0x86DD) {
            int known = inner == 0x8847 || inner == 0x8848 || inner == 0x8864 || inner == 0x8100 ||
                        inner == 0x88A8 || inner == 0x9100 || inner == 0x9200;
            if (!known)
                kind[i] = 1; /* KIND_NON_IP */
            continue;
        }
        int64_t off = tagged ? 18 : 14, proto, tos, total, end, transport, v;
        const uint8_t *ip = f + off;
        if (inner == 0x0800) {
            if (ip[0] != 0x45 || caplen < off + 20)
                continue;
            total = be16(ip + 2);
            if (total < 20 || (be16(ip + 6) & 0x3FFF) != 0)
                continue;
            proto = ip[9];
            tos = ip[1];
            end = off + total < caplen ? off + total : caplen;
            transport = off + 20;
            v = 4;
        } else {
            if (ip[0] >> 4 != 6 || caplen < off + 40)
                continue;
            proto = ip[6];
            if (proto == 0 || proto == 43 || proto == 44 || proto == 51 || proto == 60)
                continue;
            tos = (int64_t)(ip[0] & 0x0F) << 4 | ip[1] >> 4;
            int64_t plen = be16(ip + 4);
            total = plen > 0 ? plen + 40 : caplen - off;
            end = plen > 0 ? (off + plen + 40 < caplen ? off + plen + 40 : caplen) : caplen;
            transport = off + 40;
            v = 6;
        }
        int64_t available = end - transport;
        int tcp = proto == 6, udp = proto == 17, icmp = proto == 1 || proto == 58;
        if (tcp ? available < 20 : udp ? available < 8 : icmp && available < 2)
            continue;
        const uint8_t *t = f + transport;
        int64_t first_two = be16(t), start;
        if (tcp) {
            int64_t offset_byte = t[12];
            start = transport + (offset_byte >> 4) * 4;
            if (start > end || offset_byte < 0x50)
                start = end;
        } else {
            start = udp ? transport + 8 : end;
        }
        fast[i] = 1;
        kind[i] = 0; /* KIND_IP */
        version[i] = v;
        proto_out[i] = proto;
        sport[i] = tcp || udp ? first_two : 0;
        dport[i] = tcp || udp ? be16(t + 2) : icmp ? first_two : 0;
        flags[i] = tcp ? t[13] : 0;
        tos_out[i] = tos;
        nbytes[i] = total;
        pay_start[i] = base + start;
        pay_end[i] = base + end;
        if (v == 4) {
            src_lo[i] = big_endian(ip + 12, 4);
            dst_lo[i] = big_endian(ip + 16, 4);
        } else {
            src_hi[i] = big_endian(ip + 8, 8);
            src_lo[i] = big_endian(ip + 16, 8);
            dst_hi[i] = big_endian(ip + 24, 8);
            dst_lo[i] = big_endian(ip + 32, 8);
        }
        vlan[i] = tagged ? be16(f + 14) & 0x0FFF : 0;
        smac[i] = big_endian(f + 6, 6);
        dmac[i] = big_endian(f, 6);
        macs[i] = MAC_SRC | MAC_DST;
    }
}
