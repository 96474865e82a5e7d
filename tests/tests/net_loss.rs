//! End-to-end on KVM: transfers through the `user` netstack stay byte-exact over a lossy path
//! (5% of the TCP packets dropped in both directions; see [`common::lossy`]).

mod common;

use common::lossy::{have_nft, LossyPath, SERVER_IP};
use common::*;

const BYTES: u64 = 16 << 20;

#[test]
fn transfers_stay_byte_exact_with_five_percent_loss_both_ways() {
    let probe = require!(netns_ready());
    require!(have_nft());
    let path = LossyPath::new("loss");

    let (sink, addr) = path.server(&["sink", &format!("{SERVER_IP}:0"), "--timeout", "240"]);
    let o = path
        .probe(
            &probe,
            [
                "probe.scenario=tcp-send",
                &format!("probe.peer={SERVER_IP}:{}", addr.port()),
                &format!("probe.bytes={BYTES}"),
            ],
        )
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let r = peer_result(sink);
    assert_eq!(r["bytes"], BYTES, "{r}");
    assert_eq!(r["pattern_ok"], true, "{r}");

    let (source, addr) = path.server(&[
        "source",
        &format!("{SERVER_IP}:0"),
        &BYTES.to_string(),
        "--timeout",
        "240",
    ]);
    let o = path
        .probe(
            &probe,
            [
                "probe.scenario=tcp-recv",
                &format!("probe.peer={SERVER_IP}:{}", addr.port()),
            ],
        )
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let j = result_json(&o);
    assert_eq!(j["bytes"], BYTES);
    assert_eq!(j["sha256"], pattern_sha256(BYTES).as_str());
    assert_eq!(peer_result(source)["bytes"], BYTES);
}
