//! End-to-end on KVM: transfers through the `user` netstack stay byte-exact over a lossy path
//! (5% of the TCP packets dropped in both directions; see [`common::lossy`]).

mod common;

use common::lossy::{have_nft, LossyPath};
use common::*;

const BYTES: u64 = 16 << 20;

#[test]
fn transfers_stay_byte_exact_with_five_percent_loss_both_ways() {
    let probe = require!(netns_ready());
    require!(have_nft());
    let path = LossyPath::new("loss");

    path.send(&probe, BYTES, &[], &[]);
    path.recv(&probe, BYTES, &[], &[]);
}
