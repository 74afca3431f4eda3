//! The maps pinned on bpffs read back through `bpftool`, with field names from
//! BTF, and with the same values the datapath API reports.

use ovpn_lb_common::maps::names;
use ovpn_lb_tests::{
    bpffs::PinDir,
    fixture::{Program, with_lab},
    packets::{L4, V4, eth4},
    process::run,
    require_root,
};
use serde_json::Value;

fn dump(dir: &PinDir, map: &str) -> (String, Value) {
    let path = dir.path.join(map);
    let path = path.to_str().unwrap();
    let text = run("bpftool", &["map", "dump", "pinned", path]);
    let json = run("bpftool", &["-j", "map", "dump", "pinned", path]);
    (
        text,
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("bpftool -j output for {map}: {e}")),
    )
}

#[test]
fn bpftool_prints_field_names_and_our_counts() {
    if !require_root("bpftool_prints_field_names_and_our_counts") {
        return;
    }
    let dir = PinDir::new("bpftool");
    with_lab(|lab| {
        lab.datapath.pin_maps(&dir.path).unwrap();
        lab.set_weights(&[0, 1, 0]);
        let frame = eth4(&V4::new("192.168.10.5", "10.20.30.7", L4::udp(100)).datagram());
        for _ in 0..3 {
            assert_eq!(lab.run(Program::Lan, &frame, 0).verdict, 7);
        }

        let expected_fields: &[(&str, &[&str])] = &[
            (
                names::TUNNEL_STATS,
                &["tx_packets", "tx_bytes", "rx_packets", "rx_bytes"],
            ),
            (names::REASON_STATS, &["packets", "bytes"]),
            (
                names::SITE,
                &[
                    "lan_v4", "lan_v6", "families", "spray", "lan_mac", "addr", "mask",
                ],
            ),
            (
                names::TUNNELS,
                &[
                    "ifindex",
                    "xlat_v4",
                    "peer_xlat_v4",
                    "peer_real_v4",
                    "xlat_v6",
                ],
            ),
            (names::SCHEDULES, &["len", "slots", "flow"]),
        ];
        for (map, fields) in expected_fields {
            let (text, _) = dump(&dir, map);
            for field in *fields {
                assert!(
                    text.contains(&format!("\"{field}\"")),
                    "bpftool dump of {map} lacks field {field}:\n{text}"
                );
            }
        }

        // Tunnel 1's per-CPU values, summed, equal what the API reports.
        let (_, json) = dump(&dir, names::TUNNEL_STATS);
        let entry = json
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["formatted"])
            .find(|e| e["key"] == 1)
            .unwrap_or_else(|| panic!("tunnel 1 not in the dump: {json:#}"));
        let sum = |field: &str| -> u64 {
            entry["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["value"][field].as_u64().unwrap())
                .sum()
        };
        let api = lab.datapath.tunnel_stats(1).unwrap();
        assert_eq!(sum("tx_packets"), 3);
        assert_eq!(sum("tx_packets"), api.tx_packets);
        assert_eq!(sum("tx_bytes"), api.tx_bytes);
        assert_eq!(api.tx_bytes, 3 * (frame.len() as u64 - 14));
    });
}
