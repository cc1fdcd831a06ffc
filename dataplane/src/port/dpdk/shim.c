/* The few DPDK calls meshd makes, as plain functions with plain arguments.
 *
 * DPDK's fast-path calls (rte_eth_rx_burst, rte_pktmbuf_alloc, ...) are static inline in its
 * headers and its configuration structures are large and change between releases: Rust cannot
 * call the former or lay out the latter safely. This file is compiled against the installed
 * headers (pkg-config libdpdk), so their layout is always the one linked; the Rust side
 * (port/dpdk/sys.rs) sees only opaque pointers and the small structures below.
 */
#include <string.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

int meshd_errno(void) { return rte_errno; }

const char *meshd_strerror(int e) { return rte_strerror(e); }

int meshd_eal_init(int argc, char **argv) { return rte_eal_init(argc, argv); }

int meshd_thread_register(void) { return rte_thread_register(); }

/* A pool of `n` single-segment mbufs with room for a 2048-byte frame after the headroom. */
struct rte_mempool *meshd_pool_create(const char *name, unsigned n, unsigned cache) {
    return rte_pktmbuf_pool_create(name, n, cache, 0, RTE_PKTMBUF_HEADROOM + 2048,
                                   (int)rte_socket_id());
}

void meshd_pool_free(struct rte_mempool *mp) { rte_mempool_free(mp); }

/* Mbufs taken from the pool (held by the PMD's rings, in flight, or leaked); the per-lcore
 * caches count as free. */
unsigned meshd_pool_in_use(const struct rte_mempool *mp) { return rte_mempool_in_use_count(mp); }

int meshd_port_by_name(const char *name, uint16_t *port) {
    return rte_eth_dev_get_port_by_name(name, port);
}

uint16_t meshd_port_count(void) { return rte_eth_dev_count_avail(); }

struct meshd_port_info {
    uint16_t max_rx_queues;
    uint16_t max_tx_queues;
    uint16_t mtu;
    uint8_t rss; /* the device spreads flows over RX queues by a hash */
    uint8_t mac[6];
    char driver[32];
};

int meshd_port_info(uint16_t port, struct meshd_port_info *out) {
    struct rte_eth_dev_info info;
    struct rte_ether_addr mac;
    int r = rte_eth_dev_info_get(port, &info);
    if (r != 0)
        return r;
    memset(out, 0, sizeof(*out));
    out->max_rx_queues = info.max_rx_queues;
    out->max_tx_queues = info.max_tx_queues;
    out->rss = (info.flow_type_rss_offloads & (RTE_ETH_RSS_IP | RTE_ETH_RSS_UDP | RTE_ETH_RSS_TCP)) != 0;
    if (rte_eth_dev_get_mtu(port, &out->mtu) != 0)
        out->mtu = RTE_ETHER_MTU;
    r = rte_eth_macaddr_get(port, &mac);
    if (r != 0)
        return r;
    memcpy(out->mac, mac.addr_bytes, 6);
    if (info.driver_name)
        strncpy(out->driver, info.driver_name, sizeof(out->driver) - 1);
    return 0;
}

/* The key that makes Toeplitz symmetric: both directions of a flow hash alike
 * (Woo and Park, "Scalable TCP Session Monitoring with Symmetric Receive-side Scaling"). */
static uint8_t symmetric_key[40] = {
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
};

/* Configures `queues` RX/TX queue pairs (RSS over them when there are several and the device
 * has it), each RX queue filled from pools[q], sets the MTU (unless 0), and starts the port in
 * promiscuous mode. `stage` says which step failed (0 configure, 1 rx queue, 2 tx queue,
 * 3 start, 4 MTU). */
int meshd_port_start(uint16_t port, uint16_t queues, uint16_t rx_desc, uint16_t tx_desc,
                     uint16_t mtu, struct rte_mempool **pools, int *stage) {
    struct rte_eth_conf conf;
    struct rte_eth_dev_info info;
    int r = rte_eth_dev_info_get(port, &info);
    *stage = 0;
    if (r != 0)
        return r;
    memset(&conf, 0, sizeof(conf));
    if (queues > 1 && info.flow_type_rss_offloads) {
        conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf =
            info.flow_type_rss_offloads & (RTE_ETH_RSS_IP | RTE_ETH_RSS_UDP | RTE_ETH_RSS_TCP);
        if (info.hash_key_size == sizeof(symmetric_key)) {
            conf.rx_adv_conf.rss_conf.rss_key = symmetric_key;
            conf.rx_adv_conf.rss_conf.rss_key_len = sizeof(symmetric_key);
        }
    }
    r = rte_eth_dev_configure(port, queues, queues, &conf);
    if (r != 0)
        return r;
    if (mtu != 0) {
        *stage = 4;
        r = rte_eth_dev_set_mtu(port, mtu);
        if (r != 0)
            return r;
        *stage = 0;
    }
    r = rte_eth_dev_adjust_nb_rx_tx_desc(port, &rx_desc, &tx_desc);
    if (r != 0)
        return r;
    for (uint16_t q = 0; q < queues; q++) {
        *stage = 1;
        r = rte_eth_rx_queue_setup(port, q, rx_desc, rte_eth_dev_socket_id(port), NULL, pools[q]);
        if (r != 0)
            return r;
        *stage = 2;
        r = rte_eth_tx_queue_setup(port, q, tx_desc, rte_eth_dev_socket_id(port), NULL);
        if (r != 0)
            return r;
    }
    *stage = 3;
    r = rte_eth_dev_start(port);
    if (r != 0)
        return r;
    /* Frames for the tasks' MACs and broadcast come in too; some PMDs cannot: not fatal. */
    (void)rte_eth_promiscuous_enable(port);
    return 0;
}

void meshd_port_close(uint16_t port) {
    (void)rte_eth_dev_stop(port);
    (void)rte_eth_dev_close(port);
}

struct meshd_link {
    uint32_t speed_mbps;
    uint8_t up;
    uint8_t full_duplex;
};

int meshd_port_link(uint16_t port, struct meshd_link *out) {
    struct rte_eth_link link;
    int r = rte_eth_link_get_nowait(port, &link);
    if (r != 0)
        return r;
    out->speed_mbps = link.link_speed;
    out->up = link.link_status == RTE_ETH_LINK_UP;
    out->full_duplex = link.link_duplex == RTE_ETH_LINK_FULL_DUPLEX;
    return 0;
}

struct meshd_stats {
    uint64_t ipackets, opackets, ibytes, obytes;
    uint64_t imissed, ierrors, oerrors, rx_nombuf;
};

int meshd_port_stats(uint16_t port, struct meshd_stats *out) {
    struct rte_eth_stats s;
    int r = rte_eth_stats_get(port, &s);
    if (r != 0)
        return r;
    out->ipackets = s.ipackets;
    out->opackets = s.opackets;
    out->ibytes = s.ibytes;
    out->obytes = s.obytes;
    out->imissed = s.imissed;
    out->ierrors = s.ierrors;
    out->oerrors = s.oerrors;
    out->rx_nombuf = s.rx_nombuf;
    return 0;
}

int meshd_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **m, unsigned n) {
    return rte_pktmbuf_alloc_bulk(mp, m, n);
}

void meshd_free_bulk(struct rte_mbuf **m, unsigned n) { rte_pktmbuf_free_bulk(m, n); }

void meshd_mbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

/* Where a received frame is in its mbuf: the data room (`room`, `cap` bytes), the frame's
 * offset and length in it, and how many segments the frame has (more than one: a frame larger
 * than one mbuf; only the first is described). `room` is NULL for a frame that could not be
 * made whole (a stripped VLAN tag not put back). */
struct meshd_frame {
    uint8_t *room;
    uint16_t cap;
    uint16_t off;
    uint16_t len;
    uint16_t segs;
};

/* Receives up to `n` frames from the queue into `pkts`, each described in `out`. A PMD that
 * took the 802.1Q tag off (net_af_packet gets it apart from the frame from the kernel) gets it
 * put back: the tasks port's VLANs say which task sent a frame. */
uint16_t meshd_rx_frames(uint16_t port, uint16_t queue, struct rte_mbuf **pkts,
                         struct meshd_frame *out, uint16_t n) {
    uint16_t got = rte_eth_rx_burst(port, queue, pkts, n);
    for (uint16_t i = 0; i < got; i++) {
        struct rte_mbuf *m = pkts[i];
        if ((m->ol_flags & RTE_MBUF_F_RX_VLAN_STRIPPED) && m->nb_segs == 1 &&
            rte_vlan_insert(&m) != 0) {
            out[i].room = NULL;
            continue;
        }
        pkts[i] = m;
        out[i].room = (uint8_t *)m->buf_addr;
        out[i].cap = m->buf_len;
        out[i].off = m->data_off;
        out[i].len = m->data_len;
        out[i].segs = m->nb_segs;
    }
    return got;
}

/* Sends `n` single-segment mbufs whose frames are the `len[i]` bytes at `off[i]` in their data
 * rooms (received frames rewritten in place, or fresh mbufs filled by `meshd_mbuf_put`).
 * Returns how many the PMD took; the rest are still the caller's. */
uint16_t meshd_tx_frames(uint16_t port, uint16_t queue, struct rte_mbuf **pkts,
                         const uint16_t *off, const uint16_t *len, uint16_t n) {
    for (uint16_t i = 0; i < n; i++) {
        struct rte_mbuf *m = pkts[i];
        m->data_off = off[i];
        m->data_len = len[i];
        m->pkt_len = len[i];
        /* What the receiving PMD said of the frame (RSS hash, VLAN stripped, checksums) is not
         * a request to the transmitting one. */
        m->ol_flags &= RTE_MBUF_F_EXTERNAL;
        m->packet_type = 0;
    }
    return rte_eth_tx_burst(port, queue, pkts, n);
}

/* Makes a fresh mbuf hold `len` bytes and returns where they go, their offset in the data room
 * in `off`; NULL if it has no room. */
uint8_t *meshd_mbuf_put(struct rte_mbuf *m, uint16_t len, uint16_t *off) {
    rte_pktmbuf_reset(m);
    uint8_t *p = (uint8_t *)rte_pktmbuf_append(m, len);
    *off = m->data_off;
    return p;
}
