//! The sans-IO engine with several in-memory devices: a simulated relay with the sequencer's
//! rules (first commit per slot wins), simulated data channels that can lose and reorder packets,
//! simulated time. The real server and real WebRTC are exercised by the cross-component tests.

// Shared with the files tests, which use parts this file does not.
#[allow(dead_code)]
mod sim;

use std::collections::{BTreeMap, BTreeSet};

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    BasicCredential, CredentialWithKey, KeyPackage, KeyPackageIn, MlsGroup, MlsGroupCreateConfig,
    MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, ProtocolVersion,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider as _;
use openmls_traits::types::SignatureScheme;
use serde_json::value::to_raw_value;
use sim::{ORIGIN, Sim, config, new_member};
use tessera_engine::carry::{Holdings, Ranges};
use tessera_engine::decision::{Decision, DecisionStatement, SignedDecision};
use tessera_engine::delivery::Packet;
use tessera_engine::history::HistoryMessage;
use tessera_engine::identity::certify;
use tessera_engine::payload::{
    LinkMessage, LinkPacket, RtcSignal, SignalPayload, decode_link_data, decode_link_message,
    encode_circle_message, encode_history_message, encode_holdings, encode_packet,
};
use tessera_engine::renewal::RenewalOutcome;
use tessera_engine::trust::{Endorsement, KeyProof, revocation};
use tessera_engine::{ChatMessage, Engine, Event, HistoryChange, IceOutcome, roster};
use tessera_softkey::SoftKey;
use tessera_wire::{Base64Url, MemberInfo, Role};
use uuid::Uuid;
use web_time::Duration;

/// An admin, then two members: all three end in one group with links between every pair.
fn circle_of_three(seed: u64) -> (Sim, [Uuid; 3]) {
    let mut sim = Sim::new(seed);
    let a = sim.member(Role::Admin, "Ada L.");
    sim.run(5);
    assert!(
        sim.engine(a).in_group(),
        "the first admin device creates the group"
    );
    let b = sim.member(Role::Member, "Bea K.");
    let c = sim.member(Role::Member, "Cy D.");
    sim.run(40);
    sim.assert_one_group(&[a, b, c]);
    for (x, y) in [(a, b), (a, c), (b, c)] {
        assert!(sim.engine(x).link_is_up(y), "no link between {x} and {y}");
    }
    (sim, [a, b, c])
}

#[test]
fn three_devices_join_one_group_and_every_message_reaches_every_other_device_once() {
    let (mut sim, [a, b, c]) = circle_of_three(1);
    let ma = sim.send(a, "from Ada");
    sim.send(b, "from Bea");
    sim.send(c, "from Cy");
    sim.run(20);
    assert_eq!(
        sorted(sim.received(a)),
        sorted(vec![(b, "from Bea".into()), (c, "from Cy".into())])
    );
    assert_eq!(
        sorted(sim.received(b)),
        sorted(vec![(a, "from Ada".into()), (c, "from Cy".into())])
    );
    assert_eq!(
        sorted(sim.received(c)),
        sorted(vec![(a, "from Ada".into()), (b, "from Bea".into())])
    );
    assert!(sim.devices[&a].delivered.contains(&(ma, b)));
    assert!(sim.devices[&a].delivered.contains(&(ma, c)));
    // Display names travel inside the group only.
    let names = sim.engine(c).display_names();
    assert_eq!(
        names.values().cloned().collect::<BTreeSet<_>>(),
        ["Ada L.", "Bea K.", "Cy D."].map(String::from).into()
    );
    // The relay saw neither the text nor the names (with spaces, so never inside base64).
    for payload in &sim.relayed {
        for secret in [
            "from Ada", "from Bea", "from Cy", "Ada L.", "Bea K.", "Cy D.",
        ] {
            assert!(
                !payload.contains(secret),
                "the relay saw {secret:?}: {payload}"
            );
        }
    }
    for d in [a, b, c] {
        assert!(sim.refused(d).is_empty(), "{:?}", sim.refused(d));
    }
}

#[test]
fn messages_survive_lossy_reordering_links_exactly_once_and_in_order() {
    let (mut sim, [a, b, _c]) = circle_of_three(2);
    sim.loss = 0.3;
    let texts: Vec<String> = (0..30).map(|i| format!("message {i}")).collect();
    for text in &texts {
        sim.send(a, text);
    }
    sim.run(200);
    let got: Vec<String> = sim
        .received(b)
        .into_iter()
        .filter(|(from, _)| *from == a)
        .map(|(_, t)| t)
        .collect();
    assert_eq!(got, texts);
    assert_eq!(sim.engine(a).unacknowledged(b), 0);
}

#[test]
fn a_device_that_was_away_receives_every_message_once_on_its_return() {
    let (mut sim, [a, b, c]) = circle_of_three(3);
    sim.go_offline(c);
    sim.run(5);
    for i in 0..5 {
        sim.send(a, &format!("while away {i}"));
    }
    sim.send(b, "from Bea while away");
    sim.run(10);
    assert!(sim.received(c).is_empty());
    assert_eq!(
        sim.engine(a).unacknowledged(c),
        5,
        "they wait in Ada's outbox"
    );
    sim.connect(c);
    sim.run(40);
    let got = sim.received(c);
    let mut expected: Vec<(Uuid, String)> =
        (0..5).map(|i| (a, format!("while away {i}"))).collect();
    expected.push((b, "from Bea while away".into()));
    let mut sorted = got.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "each once");
    assert_eq!(sim.engine(a).unacknowledged(c), 0);
}

/// Ada sends `count` messages while Cy is away and Bea is online; then Ada goes away before Cy
/// comes back. Returns the messages' texts in order.
fn sent_while_cy_was_away(sim: &mut Sim, [a, _, c]: [Uuid; 3], count: usize) -> Vec<String> {
    sim.go_offline(c);
    sim.run(5);
    let texts: Vec<String> = (0..count).map(|i| format!("carried {i}")).collect();
    for text in &texts {
        sim.send(a, text);
    }
    sim.run(10);
    sim.go_offline(a);
    sim.run(5);
    texts
}

/// Restarts `device` as [`Sim::restart_with`] does and runs until every link of the circle is
/// up again (its peers learn of its dead links only by its asking).
fn restart_and_relink(
    sim: &mut Sim,
    device: Uuid,
    circle: &[Uuid],
    change: impl FnOnce(&mut tessera_engine::EngineConfig, &mut tessera_engine::StoredDevice),
) {
    sim.restart_with(device, change);
    for _ in 0..200 {
        sim.run(1);
        let all_up = circle.iter().all(|x| {
            circle
                .iter()
                .all(|y| x == y || (sim.engine(*x).link_is_up(*y) && sim.engine(*y).link_is_up(*x)))
        });
        if all_up {
            return;
        }
    }
    panic!("the links did not come back after restarting {device}");
}

fn from(sender: Uuid, texts: &[String]) -> Vec<(Uuid, String)> {
    texts.iter().map(|t| (sender, t.clone())).collect()
}

fn sorted(mut messages: Vec<(Uuid, String)>) -> Vec<(Uuid, String)> {
    messages.sort();
    messages
}

#[test]
fn a_message_reaches_a_device_never_online_with_its_sender_through_a_third_once_in_order() {
    let (mut sim, [a, b, c]) = circle_of_three(31);
    let texts = sent_while_cy_was_away(&mut sim, [a, b, c], 5);
    assert_eq!(sim.received(b), from(a, &texts));
    assert!(sim.received(c).is_empty());
    assert_eq!(
        sim.engine(b).view().carrying,
        5,
        "Bea keeps Ada's messages for others"
    );
    sim.connect(c);
    sim.run(40);
    assert_eq!(
        sim.received(c),
        from(a, &texts),
        "through Bea, each once, in Ada's order"
    );
    assert_eq!(sim.engine(c).view().missing, 0);
    assert!(sim.refused(c).is_empty(), "{:?}", sim.refused(c));
    assert_eq!(sim.engine(a).unacknowledged(c), 5, "Ada has not met Cy");
    // Ada comes back while Cy is away: Bea tells her who holds her messages.
    sim.go_offline(c);
    sim.run(5);
    sim.connect(a);
    sim.run(20);
    let ids: Vec<Uuid> = sim.devices[&a]
        .history
        .iter()
        .filter_map(|h| match h {
            HistoryChange::Add {
                message,
                outgoing: true,
            } => Some(message.id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 5);
    for id in &ids {
        assert!(
            sim.devices[&a].delivered.contains(&(*id, c)),
            "Ada knows Cy holds {id}"
        );
        assert!(
            sim.devices[&a].events.iter().any(|e| matches!(e,
                Event::Delivered { id: i, device, carried: true } if i == id && *device == c)),
            "said to be carried"
        );
    }
    // Ada and Cy meet at last: her own copies are not shown again, and her outbox empties.
    sim.connect(c);
    sim.run(40);
    assert_eq!(sim.received(c), from(a, &texts), "still each once");
    assert_eq!(sim.engine(a).unacknowledged(c), 0);
    assert!(sim.refused(c).is_empty(), "{:?}", sim.refused(c));
    // Once Cy acknowledged them herself, a restart of Ada tells no receipt again.
    let carried_receipts = |sim: &Sim| {
        sim.devices[&a]
            .events
            .iter()
            .filter(|e| matches!(e, Event::Delivered { carried: true, .. }))
            .count()
    };
    let before = carried_receipts(&sim);
    restart_and_relink(&mut sim, a, &[a, b, c], |_, _| {});
    sim.run(20);
    assert_eq!(
        carried_receipts(&sim),
        before,
        "no receipt for what Cy acknowledged"
    );
}

#[test]
fn a_carrier_restarted_from_its_store_still_carries_what_it_kept() {
    let (mut sim, [a, b, c]) = circle_of_three(35);
    let texts = sent_while_cy_was_away(&mut sim, [a, b, c], 3);
    sim.restart(b);
    sim.run(20);
    assert_eq!(sim.engine(b).view().carrying, 3, "kept across the restart");
    sim.connect(c);
    sim.run(40);
    assert_eq!(sim.received(c), from(a, &texts), "through Bea, restarted");
    assert!(sim.refused(c).is_empty(), "{:?}", sim.refused(c));
}

#[test]
fn a_device_shows_what_a_linked_device_holds_that_it_lacks_until_it_arrives() {
    let (mut sim, [a, b, c]) = circle_of_three(32);
    sim.send(a, "before");
    sim.run(10);
    let texts = sent_while_cy_was_away(&mut sim, [a, b, c], 3);
    // Bea holds them but may not carry them (a setting of hers): Cy learns they exist.
    sim.restart_with(b, |config, _| config.carry.batch = 0);
    sim.connect(c);
    sim.run(20);
    assert_eq!(sim.received(c), from(a, &["before".to_string()]));
    assert_eq!(
        sim.engine(c).view().missing,
        3,
        "three of Ada's messages wait"
    );
    restart_and_relink(&mut sim, b, &[b, c], |_, _| {});
    sim.run(40);
    let mut expected = vec!["before".to_string()];
    expected.extend(texts);
    assert_eq!(sim.received(c), from(a, &expected));
    assert_eq!(sim.engine(c).view().missing, 0);
}

#[test]
fn a_device_counts_what_waits_from_a_sender_it_never_heard_from_but_not_from_before_it_joined() {
    let mut sim = Sim::new(36);
    let a = sim.member(Role::Admin, "Ada L.");
    sim.run(5);
    let b = sim.member(Role::Member, "Bea K.");
    sim.run(40);
    sim.send(a, "before Cy");
    sim.send(a, "before Cy again");
    sim.run(10);
    let c = sim.member(Role::Member, "Cy D.");
    sim.run(40);
    sim.assert_one_group(&[a, b, c]);
    let texts = sent_while_cy_was_away(&mut sim, [a, b, c], 3);
    sim.restart_with(b, |config, _| config.carry.batch = 0);
    sim.connect(c);
    sim.run(20);
    assert!(sim.received(c).is_empty());
    assert_eq!(
        sim.engine(c).view().missing,
        3,
        "the three sent since Cy joined wait; the two before do not count"
    );
    restart_and_relink(&mut sim, b, &[b, c], |_, _| {});
    sim.run(40);
    assert_eq!(sim.received(c), from(a, &texts));
    assert_eq!(sim.engine(c).view().missing, 0);
}

#[test]
fn holdings_beyond_their_bounds_or_out_of_order_are_refused_and_change_nothing() {
    let (mut sim, [a, b, c]) = circle_of_three(37);
    let stream = Uuid::new_v4();
    // Seventeen separate ranges of one stream: one more than a summary may hold.
    let mut scattered = Ranges::default();
    for n in 0..17 {
        scattered.insert(n * 2);
    }
    let too_many = encode_holdings(&Holdings {
        joined: 0,
        held: vec![(stream, scattered)],
        seen: Vec::new(),
        owed: 5,
    });
    // A range that ends before it starts, written as a hostile peer would.
    let mut backwards = vec![3u8];
    backwards.extend(
        postcard::to_allocvec(&(
            0u64,
            vec![(stream, vec![(5u64, 3u64)])],
            Vec::<(Uuid, Vec<(u64, u64)>)>::new(),
            5u64,
        ))
        .expect("encode"),
    );
    for bytes in [too_many, backwards] {
        let now = sim.now;
        sim.devices
            .get_mut(&c)
            .expect("Cy")
            .engine
            .handle_link_data(now, b, &bytes);
        sim.run(2);
    }
    let refused = sim.refused(c);
    assert_eq!(
        refused
            .iter()
            .filter(|r| r.contains("holdings beyond their bounds"))
            .count(),
        2,
        "{refused:?}"
    );
    assert_eq!(
        sim.engine(c).view().missing,
        0,
        "the claims counted for nothing"
    );
    sim.send(a, "still working");
    sim.run(10);
    sim.assert_last_received(&[b, c], a, "still working");
}

#[test]
fn what_a_device_keeps_for_others_stays_within_its_bound_and_it_says_what_it_dropped() {
    let (mut sim, [a, b, c]) = circle_of_three(33);
    restart_and_relink(&mut sim, b, &[a, b, c], |config, _| {
        config.carry.max_messages = 3
    });
    let texts = sent_while_cy_was_away(&mut sim, [a, b, c], 5);
    assert_eq!(
        sim.devices[&b].store.carried.len(),
        3,
        "Bea's store holds three"
    );
    assert_eq!(
        sim.engine(b).view().dropped,
        2,
        "two dropped before Cy had them"
    );
    sim.connect(c);
    sim.run(40);
    assert_eq!(
        sim.received(c),
        from(a, &texts[2..]),
        "the newest three, through Bea"
    );
    sim.connect(a);
    sim.run(40);
    assert_eq!(
        sorted(sim.received(c)),
        sorted(from(a, &texts)),
        "the rest once Ada is back, each once"
    );
}

/// What a carrier can do to what it carries, by altering its own store.
#[derive(Debug, Clone, Copy)]
enum Carrier {
    /// Flips a byte of a message.
    Alters,
    /// Names the first message as the second and the second as the first.
    Swaps,
    /// Hands the first message again under a number of its own.
    Replays,
    /// Drops a message.
    Drops,
}

#[test]
fn a_carrier_that_alters_renames_replays_or_drops_is_detected_or_harmless() {
    for (seed, carrier) in [
        (41, Carrier::Alters),
        (42, Carrier::Swaps),
        (43, Carrier::Replays),
        (44, Carrier::Drops),
    ] {
        let (mut sim, [a, b, c]) = circle_of_three(seed);
        let texts = sent_while_cy_was_away(&mut sim, [a, b, c], 3);
        sim.restart_with(b, |_, store| {
            let mut rows: Vec<_> = store.carried.values().cloned().collect();
            rows.sort_by_key(|r| r.seq);
            store.carried.clear();
            match carrier {
                Carrier::Alters => {
                    let last = rows[0].message.len() - 1;
                    rows[0].message[last] ^= 1;
                }
                Carrier::Swaps => {
                    let (first, second) = (rows[0].seq, rows[1].seq);
                    rows[0].seq = second;
                    rows[1].seq = first;
                }
                Carrier::Replays => {
                    let mut again = rows[0].clone();
                    again.seq = 100;
                    rows.push(again);
                }
                Carrier::Drops => {
                    rows.remove(0);
                }
            }
            for row in rows {
                store.carried.insert((row.stream, row.seq), row);
            }
        });
        sim.connect(c);
        sim.run(40);
        let got = sim.received(c);
        let shown: BTreeSet<&String> = got.iter().map(|(_, t)| t).collect();
        assert_eq!(
            shown.len(),
            got.len(),
            "{carrier:?}: nothing shown twice: {got:?}"
        );
        assert!(
            got.iter()
                .all(|(sender, text)| *sender == a && texts.contains(text)),
            "{carrier:?}: only Ada's genuine messages: {got:?}"
        );
        let refused = sim.refused(c);
        match carrier {
            Carrier::Alters | Carrier::Swaps | Carrier::Replays => {
                assert!(!refused.is_empty(), "{carrier:?} is detected");
            }
            Carrier::Drops => {
                assert_eq!(got, from(a, &texts[1..]), "the rest arrives");
            }
        }
        // Ada comes back: whatever the carrier withheld or spoilt reaches Cy from her.
        sim.connect(a);
        sim.run(40);
        assert_eq!(
            sorted(sim.received(c)),
            sorted(from(a, &texts)),
            "{carrier:?}: every message once in the end"
        );
    }
}

#[test]
fn links_keep_delivering_while_the_server_is_down() {
    let (mut sim, [a, b, c]) = circle_of_three(4);
    for d in [a, b, c] {
        sim.disconnect(d);
    }
    sim.run(2);
    sim.send(a, "server is down");
    sim.run(10);
    assert_eq!(sim.received(b), vec![(a, "server is down".to_string())]);
    assert_eq!(sim.received(c), vec![(a, "server is down".to_string())]);
}

#[test]
fn a_revoked_member_is_removed_by_an_admin_device_and_reads_nothing_afterwards() {
    let (mut sim, [a, b, c]) = circle_of_three(5);
    let bea = sim.devices[&b].member;
    sim.revoke(bea);
    sim.serve_directory(&[a]);
    sim.run(20);
    assert!(
        sim.devices[&b].removed,
        "Bea's device learns it was removed"
    );
    assert!(!sim.engine(b).in_group());
    sim.assert_one_group(&[a, c]);
    sim.send(a, "after the revocation");
    sim.run(20);
    assert_eq!(
        sim.received(c),
        vec![(a, "after the revocation".to_string())]
    );
    assert!(sim.received(b).is_empty(), "Bea read {:?}", sim.received(b));
}

#[test]
fn concurrent_commits_converge_to_one_epoch() {
    let (mut sim, [a, b, c]) = circle_of_three(6);
    // Every member device adds newcomers at once instead of waiting for the designated one.
    for d in [a, b, c] {
        let dev = sim.devices.get_mut(&d).expect("d");
        let state = dev.store.clone();
        let mut config = config();
        config.add_fallback_after = Duration::ZERO;
        dev.engine = Engine::restore(config, state).expect("restore");
        dev.connected = false;
        sim.connect(d);
    }
    sim.run(20);
    let d = sim.member(Role::Member, "Dee");
    let e = sim.member(Role::Member, "Eve");
    sim.run(80);
    sim.assert_one_group(&[a, b, c, d, e]);
    sim.send(e, "hello from Eve");
    sim.run(20);
    sim.assert_last_received(&[a, b, c, d], e, "hello from Eve");
}

#[test]
fn a_restarted_device_keeps_its_group_outbox_and_history_position() {
    let (mut sim, [a, b, _c]) = circle_of_three(7);
    sim.send(a, "before the crash");
    sim.run(10);
    // Crash: the engine is rebuilt from what its driver last stored.
    let dev = sim.devices.get_mut(&b).expect("b");
    let state = dev.store.clone();
    dev.engine = Engine::restore(config(), state).expect("restore");
    dev.connected = false;
    sim.go_offline(b);
    sim.connect(b);
    sim.send(a, "after the crash");
    sim.run(40);
    assert_eq!(
        sim.received(b),
        vec![
            (a, "before the crash".to_string()),
            (a, "after the crash".to_string())
        ]
    );
}

#[test]
fn a_restarted_device_whose_peers_still_hold_its_dead_links_gets_new_ones_by_asking() {
    let (mut sim, devices) = circle_of_three(8);
    // Only the device with the lower id of a pair opens their link: the restarted device must
    // have the higher id to depend on asking.
    let restarted = *devices.iter().max().expect("three");
    let others: Vec<Uuid> = devices
        .iter()
        .copied()
        .filter(|d| *d != restarted)
        .collect();
    sim.restart(restarted);
    for other in &others {
        assert!(
            sim.engine(*other).link_is_up(restarted),
            "the peers do not know the link died"
        );
        assert!(!sim.engine(restarted).link_is_up(*other));
    }
    sim.send(others[0], "after the restart");
    sim.send(restarted, "back again");
    // One simulated second: the restarted device asks at once, and the link opens; the stale
    // side would otherwise wait for its link to time out.
    sim.run(20);
    for other in &others {
        assert!(sim.engine(*other).link_is_up(restarted));
        assert!(sim.engine(restarted).link_is_up(*other));
    }
    sim.assert_last_received(&others, restarted, "back again");
    let got: Vec<_> = sim
        .received(restarted)
        .into_iter()
        .filter(|(_, text)| text == "after the restart")
        .collect();
    assert_eq!(got, vec![(others[0], "after the restart".to_string())]);
    assert!(sim.refused_frames.is_empty(), "{:?}", sim.refused_frames);
}

#[test]
fn a_link_request_a_relay_redirects_to_another_device_is_refused_there() {
    let (mut sim, devices) = circle_of_three(9);
    let restarted = *devices.iter().max().expect("three");
    let mut others: Vec<Uuid> = devices
        .iter()
        .copied()
        .filter(|d| *d != restarted)
        .collect();
    others.sort();
    // What the restarted device sends the lower of the others (only requests for a link: it
    // never offers to a lower id) reaches the other one instead.
    sim.redirect = Some((others[0], others[1]));
    sim.restart(restarted);
    sim.run(100);
    let refused = sim.refused(others[1]);
    assert!(
        refused
            .iter()
            .any(|r| r == "MLS signal: the message is addressed to another device"),
        "{refused:?}"
    );
    assert!(!sim.engine(restarted).link_is_up(others[0]));
    assert!(
        sim.engine(restarted).link_is_up(others[1]),
        "the request meant for it still works"
    );
}

#[test]
fn welcomes_and_catch_up_answers_too_large_for_a_frame_go_in_paced_pieces() {
    let mut sim = Sim::new(12);
    // A relay with a small frame limit and a slow rate: a Welcome into a group of two or more
    // (~1 KB a device) and an answer with two commits no longer fit one frame (a commit adding
    // one device, ~1.3 KB, still does), and the pieces come in bursts.
    sim.limits.frame_bytes = 2 * 1024;
    sim.limits.frames_per_second = 10;
    sim.limits.burst = 20;
    let a = sim.member(Role::Admin, "Ada L.");
    sim.run(5);
    let b = sim.member(Role::Member, "Bea K.");
    let c = sim.member(Role::Member, "Cy D.");
    sim.run(80);
    sim.assert_one_group(&[a, b, c]);
    sim.go_offline(c);
    sim.run(5);
    let d = sim.member(Role::Member, "Dee");
    sim.run(80);
    let e = sim.member(Role::Member, "Eve");
    sim.run(80);
    assert_eq!(
        sim.engine(e).group_devices().len(),
        5,
        "Cy's device is away, not gone"
    );
    assert!(sim.engine(c).epoch() < sim.engine(e).epoch());
    sim.connect(c);
    sim.run(200);
    sim.assert_one_group(&[a, b, c, d, e]);
    sim.send(e, "everyone got in");
    sim.run(100);
    sim.assert_last_received(&[a, b, c, d], e, "everyone got in");
    let pieces_of = |what: &str| {
        let start = r#""i":0,"#;
        let kind = format!(r#"{{\"t\":\"{what}\""#);
        sim.relayed
            .iter()
            .filter(|p| p.contains(r#""t":"piece""#) && p.contains(start) && p.contains(&kind))
            .count()
    };
    assert!(pieces_of("welcome") >= 2, "the Welcomes went in pieces");
    assert!(
        pieces_of("commits") >= 1,
        "the catch-up answer went in pieces"
    );
    assert!(sim.refused_frames.is_empty(), "{:?}", sim.refused_frames);
    assert!(sim.largest_frame <= 2 * 1024, "{} bytes", sim.largest_frame);
}

#[test]
fn newcomers_arriving_together_are_added_in_commits_that_each_fit_a_frame() {
    let mut sim = Sim::new(13);
    // One add (~1.3 KB) fits a 2 KiB frame, two do not: four newcomers at once take four
    // commits instead of one the relay would refuse.
    sim.limits.frame_bytes = 2 * 1024;
    let a = sim.member(Role::Admin, "Ada L.");
    sim.run(5);
    let slot = sim.slot;
    let newcomers: Vec<Uuid> = (0..4)
        .map(|i| sim.member(Role::Member, &format!("Newcomer {i}")))
        .collect();
    sim.run(200);
    let mut all = vec![a];
    all.extend(&newcomers);
    sim.assert_one_group(&all);
    assert!(sim.slot - slot >= 4, "{} commits", sim.slot - slot);
    assert!(sim.refused_frames.is_empty(), "{:?}", sim.refused_frames);
    sim.send(newcomers[3], "all in");
    sim.run(40);
    sim.assert_last_received(&all[..4], newcomers[3], "all in");
}

#[test]
fn a_relay_that_alters_payloads_is_detected_and_nothing_is_accepted() {
    let (mut sim, [a, b, c]) = circle_of_three(8);
    let epoch = sim.engine(a).epoch();
    // Flip one character inside every MLS-protected signal (SDP, ICE).
    sim.tamper = Some(Box::new(|text: &str| {
        let mut value: serde_json::Value = serde_json::from_str(text).ok()?;
        let msg = value.get_mut("msg")?;
        let s = msg.as_str()?.to_owned();
        let mut bytes = Base64Url::decode(&s).ok()?;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        *msg = serde_json::Value::String(Base64Url::encode(&bytes));
        Some(value.to_string())
    }));
    let now = sim.now;
    sim.devices
        .get_mut(&a)
        .expect("a")
        .engine
        .send_rtc(
            now,
            b,
            RtcSignal::Offer {
                sdp: "v=0 forged".into(),
            },
        )
        .expect("offer");
    sim.drain(a);
    sim.run(3);
    assert!(
        sim.refused(b).iter().any(|r| r.starts_with("MLS signal")),
        "{:?}",
        sim.refused(b)
    );
    assert_eq!(sim.engine(a).epoch(), epoch);
    let _ = c;
}

#[test]
fn substituted_key_packages_and_certificates_are_refused() {
    let (mut sim, [a, b, c]) = circle_of_three(9);
    // A newcomer whose KeyPackage the relay swaps for another device's (Bea's, replayed).
    let (mut key, info) = sim.admit(Role::Member);
    let member = info.id;
    sim.directory.push(info);
    let d = sim.device(&mut key, member, "Dee");
    sim.run(40);
    sim.assert_one_group(&[a, b, c, d]);
    // Replay Dee's KeyPackage as if it came from Cy's device: the certificate names Dee's device.
    let kp_payload = sim
        .relayed
        .iter()
        .find(|p| p.contains("key_package"))
        .cloned()
        .expect("a KeyPackage was relayed");
    let payload = serde_json::value::RawValue::from_string(kp_payload.clone()).expect("json");
    let cy = sim.devices[&c].member;
    sim.inject_signal(a, c, cy, payload);
    assert!(
        sim.refused(a)
            .iter()
            .any(|r| r.contains("KeyPackage") && r.contains("not the device")),
        "{:?}",
        sim.refused(a)
    );
    // A KeyPackage whose bytes were altered (signature broken).
    let mut value: serde_json::Value = serde_json::from_str(&kp_payload).expect("json");
    let kp = value["kp"].as_str().expect("kp").to_owned();
    let mut bytes = Base64Url::decode(&kp).expect("b64");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    value["kp"] = serde_json::Value::String(Base64Url::encode(&bytes));
    let payload = serde_json::value::RawValue::from_string(value.to_string()).expect("json");
    let dee = sim.devices[&d].member;
    sim.inject_signal(a, d, dee, payload);
    assert!(
        sim.refused(a)
            .iter()
            .filter(|r| r.starts_with("KeyPackage"))
            .count()
            >= 2,
        "{:?}",
        sim.refused(a)
    );
    // A genuine certificate (of Dee's member, for a key the attacker does not hold) on a
    // KeyPackage signed with the attacker's own key.
    let provider = tessera_engine::provider::Provider::default();
    let attacker = SignatureKeyPair::new(SignatureScheme::ED25519).expect("key");
    attacker.store(provider.storage()).expect("store");
    let stolen = certify("localhost", member, d, b"a key the attacker lacks", |r| {
        key.sign_in(r, ORIGIN)
    })
    .expect("cert");
    let forged = KeyPackage::builder()
        .build(
            tessera_engine::CIPHERSUITE,
            &provider,
            &attacker,
            CredentialWithKey {
                credential: BasicCredential::new(serde_json::to_vec(&stolen).expect("json")).into(),
                signature_key: attacker.to_public_vec().into(),
            },
        )
        .expect("key package");
    let kp = MlsMessageOut::from(forged.key_package().clone())
        .to_bytes()
        .expect("bytes");
    let payload = to_raw_value(&SignalPayload::KeyPackage { kp: kp.into() }).expect("json");
    sim.inject_signal(a, d, dee, payload);
    assert!(
        sim.refused(a).iter().any(|r| r.contains("for another key")),
        "{:?}",
        sim.refused(a)
    );
    let epoch = sim.engine(a).epoch();
    sim.run(10);
    assert_eq!(sim.engine(a).epoch(), epoch, "nothing was added");
}

/// The KeyPackage `device` announced through the relay (its last one).
fn announced_key_package(sim: &Sim, device: Uuid) -> KeyPackage {
    sim.relayed
        .iter()
        .rev()
        .filter_map(|p| serde_json::from_str::<SignalPayload>(p).ok())
        .find_map(|p| match p {
            SignalPayload::KeyPackage { kp } => {
                let bytes = kp.into_vec();
                let MlsMessageBodyIn::KeyPackage(kp) =
                    MlsMessageIn::tls_deserialize_exact(bytes).ok()?.extract()
                else {
                    return None;
                };
                let kp = KeyPackageIn::validate(
                    kp,
                    tessera_engine::provider::Provider::default().crypto(),
                    ProtocolVersion::Mls10,
                )
                .ok()?;
                let certificate = roster::certificate_of(kp.leaf_node().credential()).ok()?;
                (certificate.device == device).then_some(kp)
            }
            _ => None,
        })
        .expect("the device announced a KeyPackage")
}

#[test]
fn a_forged_or_replayed_welcome_is_refused_and_the_device_still_joins_the_real_group() {
    let mut sim = Sim::new(21);
    let a = sim.member(Role::Admin, "Ada L.");
    sim.run(5);
    // Two newcomers announce to each other while the only member device is away: nobody adds
    // them yet, and the relay has Dee's KeyPackage.
    sim.go_offline(a);
    let x = sim.member(Role::Member, "Xan");
    let d = sim.member(Role::Member, "Dee");
    sim.run(2);
    let dee_package = announced_key_package(&sim, d);

    // An outsider (a hardware key the directory does not know) certifies its own device key and
    // builds a group of its own around Dee's public KeyPackage.
    let (mut outsider_key, outsider) = new_member(Role::Admin);
    let provider = tessera_engine::provider::Provider::default();
    let device_key = SignatureKeyPair::new(SignatureScheme::ED25519).expect("key");
    device_key.store(provider.storage()).expect("store");
    let rogue_device = Uuid::new_v4();
    let certificate = certify(
        "localhost",
        outsider.id,
        rogue_device,
        &device_key.to_public_vec(),
        |r| outsider_key.sign_in(r, ORIGIN),
    )
    .expect("certificate");
    let mut rogue = MlsGroup::new(
        &provider,
        &device_key,
        &MlsGroupCreateConfig::builder()
            .ciphersuite(tessera_engine::CIPHERSUITE)
            .use_ratchet_tree_extension(true)
            .build(),
        CredentialWithKey {
            credential: BasicCredential::new(serde_json::to_vec(&certificate).expect("json"))
                .into(),
            signature_key: device_key.to_public_vec().into(),
        },
    )
    .expect("rogue group");
    let (_, welcome, _) = rogue
        .add_members(&provider, &device_key, &[dee_package])
        .expect("add Dee");
    let forged = to_raw_value(&SignalPayload::Welcome {
        welcome: welcome.to_bytes().expect("bytes").into(),
        next: 1,
    })
    .expect("json");
    let fetches = sim.devices[&d].fetches;
    sim.inject_signal(d, rogue_device, outsider.id, forged);
    sim.run(2);
    assert_eq!(
        sim.devices[&d].fetches,
        fetches + 1,
        "one fresh directory for an unknown signer, then the refusal stands"
    );
    assert!(!sim.engine(d).in_group(), "Dee joined the outsider's group");
    assert!(
        sim.refused(d)
            .iter()
            .any(|r| r.starts_with("Welcome") && r.contains("member")),
        "{:?}",
        sim.refused(d)
    );

    // The admin returns and adds both; Dee's real Welcome, replayed to her and to a newcomer,
    // changes nothing.
    sim.connect(a);
    sim.run(40);
    sim.assert_one_group(&[a, x, d]);
    let welcome = sim
        .relayed
        .iter()
        .rev()
        .find(|p| p.contains("\"welcome\""))
        .cloned()
        .expect("the real Welcome");
    let replay = || serde_json::value::RawValue::from_string(welcome.clone()).expect("json");
    let ada = sim.devices[&a].member;
    let epoch = sim.engine(d).epoch();
    sim.inject_signal(d, a, ada, replay());
    assert_eq!(sim.engine(d).epoch(), epoch, "Dee's group did not change");
    let e = sim.member(Role::Member, "Eve");
    sim.hello_now(e);
    sim.inject_signal(e, a, ada, replay());
    assert!(!sim.engine(e).in_group(), "a Welcome for Dee let Eve in");
    assert!(
        sim.refused(e).iter().any(|r| r.starts_with("Welcome")),
        "{:?}",
        sim.refused(e)
    );
    sim.run(40);
    sim.assert_one_group(&[a, x, d, e]);
    sim.send(d, "still one circle");
    sim.run(10);
    sim.assert_last_received(&[e], d, "still one circle");
}

#[test]
fn commits_nobody_asked_for_are_ignored() {
    let (mut sim, [a, b, c]) = circle_of_three(22);
    let epoch = sim.engine(b).epoch();
    let slot = epoch.map_or(0, |e| e + 1);
    let refused_before = sim.refused(b).len();
    // A member device (or a relay forging its id) pushes "commits" for the next slots to Bea,
    // who never asked for them.
    for commits in [
        vec![Base64Url::from(&b"not a commit"[..])],
        vec![Base64Url::from(vec![0u8; 64]); 10],
    ] {
        let payload = to_raw_value(&SignalPayload::Commits {
            from: slot,
            commits,
        })
        .expect("json");
        sim.inject_signal(b, a, sim.devices[&a].member, payload);
    }
    sim.run(10);
    assert_eq!(sim.engine(b).epoch(), epoch, "Bea's epoch moved");
    assert_eq!(
        sim.refused(b).len(),
        refused_before,
        "Bea held and tried them: {:?}",
        sim.refused(b)
    );
    sim.send(c, "after the push");
    sim.run(10);
    sim.assert_last_received(&[b], c, "after the push");
}

/// `msg` (a TLS-encoded MLS PrivateMessage) claiming epoch `epoch`: its header altered in place.
fn with_epoch(msg: &[u8], epoch: u64) -> Vec<u8> {
    // version (2) and wire format (2), then the group id: an MLS variable-length size, then bytes.
    let mut at = 4;
    let (size, width) = match msg[at] >> 6 {
        0 => (usize::from(msg[at] & 0x3f), 1),
        1 => (
            usize::from(u16::from_be_bytes([msg[at] & 0x3f, msg[at + 1]])),
            2,
        ),
        _ => panic!("an unexpected group id length"),
    };
    at += width + size;
    let mut out = msg.to_vec();
    out[at..at + 8].copy_from_slice(&epoch.to_be_bytes());
    out
}

#[test]
fn a_flood_of_messages_from_future_epochs_is_kept_within_a_bound() {
    let (mut sim, [a, b, c]) = circle_of_three(23);
    // A genuine link message from Ada to Bea, as sent.
    sim.send(a, "a template");
    let template = sim
        .in_flight
        .iter()
        .filter(|(from, to, _)| *from == a && *to == b)
        .flat_map(|(_, _, bytes)| decode_link_data(bytes).unwrap_or_default())
        .find_map(|packet| match packet {
            LinkPacket::Delivery(Packet::Chunk {
                bytes, count: 1, ..
            }) => Some(bytes),
            _ => None,
        })
        .expect("a one-chunk message");
    let Ok(LinkMessage::Circle {
        stream,
        seq: sent,
        mls,
    }) = decode_link_message(&template)
    else {
        panic!("a chat message is named for the circle");
    };
    let (stream, sent, template) = (stream, sent, mls.to_vec());
    sim.run(5);
    let epoch = sim.engine(b).epoch().expect("in the group");
    // Ada (a member; only she can speak on her link) sends sequence numbers Bea has not seen,
    // each claiming a later epoch: Bea keeps them for when she gets there, within a bound.
    let flood = |sim: &mut Sim, seqs: std::ops::Range<u64>| {
        for seq in seqs {
            let packet = encode_packet(&Packet::Chunk {
                seq,
                index: 0,
                count: 1,
                bytes: encode_circle_message(
                    stream,
                    sent + 1 + seq,
                    &with_epoch(&template, epoch + 1 + seq),
                ),
            });
            let now = sim.now;
            let bea = sim.devices.get_mut(&b).expect("b");
            bea.engine.handle_link_data(now, a, &packet);
            sim.drain(b);
        }
    };
    flood(&mut sim, 0..400);
    let after_400 = sim.devices[&b].store.state.len();
    flood(&mut sim, 400..1_000);
    let after_1000 = sim.devices[&b].store.state.len();
    assert!(
        after_1000 < after_400 + 2 * 1024,
        "Bea's saved state grew from {after_400} to {after_1000} bytes"
    );
    assert_eq!(sim.engine(b).epoch(), Some(epoch));
    sim.send(c, "Bea still reads Cy");
    sim.run(10);
    sim.assert_last_received(&[b], c, "Bea still reads Cy");
}

// ---------------------------------------------------------------- the device policy the engine owns

#[test]
fn a_directory_that_cannot_be_fetched_is_asked_for_again_after_the_pause_and_the_device_joins() {
    let mut sim = Sim::new(30);
    let a = sim.member(Role::Admin, "Ada L.");
    sim.run(5);
    sim.directory_down = true;
    let b = sim.member(Role::Member, "Bea K.");
    sim.run(200); // 10 s
    let dev = &sim.devices[&b];
    let pauses: Vec<Duration> = dev.fetched_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        (4..=6).contains(&dev.fetched_at.len()),
        "one fetch every 2 s: {pauses:?}"
    );
    let retry = config().directory_retry;
    assert!(pauses.iter().all(|p| *p >= retry), "{pauses:?}");
    let unavailable = dev
        .events
        .iter()
        .filter(|e| matches!(e, Event::DirectoryUnavailable { .. }))
        .count();
    assert_eq!(unavailable, dev.fetched_at.len(), "each failure is told");
    assert!(!sim.engine(b).in_group());
    sim.directory_down = false;
    sim.run(80);
    sim.assert_one_group(&[a, b]);
}

#[test]
fn ice_servers_are_asked_for_again_a_third_through_their_lifetime_or_after_a_failure() {
    let mut sim = Sim::new(31);
    let a = sim.member(Role::Admin, "Ada L.");
    sim.run(2);
    let start = sim.now;
    let fetches_after = |sim: &Sim| -> Vec<Duration> {
        sim.devices[&a]
            .ice_fetches
            .iter()
            .map(|at| *at - start)
            .collect()
    };
    // What the device's own fetch brought: the outcome the simulated server gives from now on.
    let fetched = |sim: &mut Sim, ttl: u64| {
        let now = sim.now;
        sim.ice = IceOutcome::Offered {
            relay_ttl: Some(Duration::from_secs(ttl)),
        };
        let outcome = sim.ice;
        let device = sim.devices.get_mut(&a).expect("device");
        device.engine.handle_ice_servers(now, outcome);
    };
    // TURN credentials for 60 s: asked again at 20 s, and every 20 s while they keep coming.
    fetched(&mut sim, 60);
    sim.run(20 * 20 + 10); // 20.5 s
    assert_eq!(fetches_after(&sim).len(), 1, "{:?}", fetches_after(&sim));
    assert!(fetches_after(&sim)[0] >= Duration::from_secs(20));
    // The server does not answer: asked again 30 s later, not sooner.
    sim.ice = IceOutcome::Unavailable;
    sim.run(20 * 20); // to 40.5 s: the second fetch (at ~40 s) fails
    assert_eq!(fetches_after(&sim).len(), 2, "{:?}", fetches_after(&sim));
    sim.run(20 * 29); // to 69.5 s: no fetch yet
    assert_eq!(fetches_after(&sim).len(), 2, "{:?}", fetches_after(&sim));
    // A server without TURN: never asked again.
    sim.ice = IceOutcome::NotConfigured;
    sim.run(20 * 2); // the third fetch, at ~70 s
    assert_eq!(fetches_after(&sim).len(), 3, "{:?}", fetches_after(&sim));
    sim.run(20 * 120);
    assert_eq!(fetches_after(&sim).len(), 3, "{:?}", fetches_after(&sim));
    // A short lifetime is renewed 5 s apart at the least.
    fetched(&mut sim, 3);
    sim.run(20 * 11); // 11 s: two renewals
    let last: Vec<Duration> = fetches_after(&sim)[3..].to_vec();
    assert_eq!(last.len(), 2, "{last:?}");
    assert!(last[1] - last[0] >= Duration::from_secs(5), "{last:?}");
}

#[test]
fn a_device_stops_once_and_says_why_when_revoked_replaced_or_its_session_cannot_be_renewed() {
    use tessera_engine::StopReason;
    use tessera_wire::signal::{FrameErrorCode, ServerFrame};
    for (case, reason) in [
        ("revoked", StopReason::Revoked),
        ("replaced", StopReason::Replaced),
        ("session", StopReason::SessionEnded),
        ("session_ended", StopReason::SessionEnded),
    ] {
        let (mut sim, [a, b, _]) = circle_of_three(32);
        // The server refuses to renew the session (the device was logged out, say).
        sim.renewal = Some(RenewalOutcome::Refused);
        let now = sim.now;
        match case {
            "revoked" => sim.frames.push_back((b, ServerFrame::Revoked)),
            "session_ended" => sim.frames.push_back((b, ServerFrame::SessionEnded)),
            "replaced" => sim.frames.push_back((
                b,
                ServerFrame::Error {
                    code: FrameErrorCode::Replaced,
                    message: "this device connected again elsewhere".into(),
                },
            )),
            _ => sim
                .devices
                .get_mut(&b)
                .expect("device")
                .engine
                .handle_session_ended(now),
        }
        sim.run(2);
        let stops: Vec<&Event> = sim.devices[&b]
            .events
            .iter()
            .filter(|e| matches!(e, Event::Stopped { .. }))
            .collect();
        assert_eq!(stops, [&Event::Stopped { reason }], "{case}");
        assert_eq!(sim.engine(b).stopped(), Some(reason), "{case}");
        // A stopped device acts on nothing more: a message to it stays unacknowledged.
        let events_before = sim.devices[&b].events.len();
        sim.send(a, "after the stop");
        sim.run(40);
        assert!(
            !sim.received(b).iter().any(|(_, t)| t == "after the stop"),
            "{case}"
        );
        assert_eq!(sim.devices[&b].events.len(), events_before, "{case}");
    }
}

#[test]
fn history_rows_keep_each_message_once_and_each_acknowledgement() {
    let (mut sim, [a, b, c]) = circle_of_three(33);
    let id = sim.send(a, "for the record");
    sim.run(20);
    let adds = |device: Uuid| -> Vec<(String, bool)> {
        sim.devices[&device]
            .history
            .iter()
            .filter_map(|h| match h {
                HistoryChange::Add { message, outgoing } => Some((message.text.clone(), *outgoing)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(adds(a), [("for the record".to_owned(), true)]);
    assert_eq!(adds(b), [("for the record".to_owned(), false)]);
    assert_eq!(adds(c), [("for the record".to_owned(), false)]);
    let delivered: BTreeSet<Uuid> = sim.devices[&a]
        .history
        .iter()
        .filter_map(|h| match h {
            HistoryChange::Delivered {
                device,
                id: d,
                peer,
            } if *device == a && *d == id => Some(*peer),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, BTreeSet::from([b, c]));
}

#[test]
fn the_view_shows_the_group_with_names_links_and_what_waits() {
    let (mut sim, [a, b, c]) = circle_of_three(34);
    sim.go_offline(c);
    sim.send(a, "while Cy is away");
    sim.run(20);
    let view = sim.engine(a).view();
    assert_eq!((view.member, view.device), (sim.devices[&a].member, a));
    assert!(view.in_group && view.connected);
    assert_eq!(view.epoch, sim.engine(a).epoch());
    let names: BTreeSet<&str> = view.names.values().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(["Ada L.", "Bea K.", "Cy D."]));
    let row = |d: Uuid| {
        view.devices
            .iter()
            .find(|r| r.device == d)
            .expect("listed")
            .clone()
    };
    assert!(row(a).own && row(a).online && !row(a).linked);
    assert!(row(b).linked && row(b).online && row(b).waiting == 0);
    assert!(!row(c).linked && !row(c).online && row(c).waiting == 1);
    assert_eq!(view.devices.len(), 3);
}

/// The `Distrusted` events a device said, as (member, key named, reason).
fn distrusted(sim: &Sim, device: Uuid) -> Vec<(Uuid, bool, String)> {
    sim.devices[&device]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Distrusted {
                member,
                key,
                reason,
                ..
            } => Some((*member, key.is_some(), reason.to_string())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_member_the_server_lists_without_a_signed_invitation_never_joins_and_devices_say_so() {
    let (mut sim, [a, b, c]) = circle_of_three(21);
    // The server lists a member of its own making (no proof), and one whose proof was made with
    // an invitation key no admin signed (a copy of Bea's admission under another member id).
    let (mut forged_key, forged) = new_member(Role::Member);
    let forged_id = forged.id;
    sim.directory.push(forged);
    let f = sim.device(&mut forged_key, forged_id, "Mallory");
    sim.run(40);
    assert!(!sim.engine(f).in_group(), "the forged member joined");
    sim.assert_one_group(&[a, b, c]);
    for honest in [a, b, c] {
        assert!(
            distrusted(&sim, honest).contains(&(
                forged_id,
                false,
                "no signed invitation or endorsement admits this key".into()
            )),
            "{:?}",
            distrusted(&sim, honest)
        );
    }
    sim.send(a, "not for Mallory");
    sim.run(20);
    assert!(sim.received(f).is_empty());
    assert_eq!(sim.received(b), vec![(a, "not for Mallory".to_string())]);
}

#[test]
fn a_key_or_role_the_server_adds_to_an_honest_member_counts_for_nothing() {
    let (mut sim, [a, b, c]) = circle_of_three(22);
    let bea = sim.devices[&b].member;
    // A second key for Bea that she never endorsed, certifying a device of the server's; and
    // Bea made an admin in the directory.
    let (mut server_key, server) = new_member(Role::Member);
    let entry = sim.directory.iter_mut().find(|m| m.id == bea).expect("Bea");
    entry.passkeys.push(server.passkeys[0].clone());
    entry.role = Role::Admin;
    let rogue = sim.device(&mut server_key, bea, "Bea's other device");
    // Bea's device fetches the directory again (as it does every few minutes).
    sim.serve_directory(&[b]);
    sim.run(40);
    assert!(
        !sim.engine(rogue).in_group(),
        "the forged key's device joined"
    );
    sim.assert_one_group(&[a, b, c]);
    let said = distrusted(&sim, b);
    assert!(
        said.iter().any(|(m, key, _)| *m == bea && *key),
        "Bea's own device says a key was added to her account: {said:?}"
    );
    assert!(
        said.contains(&(
            bea,
            false,
            "the directory gives this member a role no admin signed".into()
        )),
        "{said:?}"
    );
    assert!(
        sim.devices[&b].events.iter().any(|e| matches!(
            e,
            Event::Distrusted {
                own: true,
                key: Some(_),
                ..
            }
        )),
        "the warning on Bea's device is marked as her own"
    );
    sim.send(a, "not for the server's device");
    sim.run(20);
    assert!(sim.received(rogue).is_empty());
}

#[test]
fn a_member_dropped_or_revoked_without_an_admins_signature_stays_and_devices_say_so() {
    let (mut sim, [a, b, c]) = circle_of_three(23);
    let bea = sim.devices[&b].member;
    let cid = sim.devices[&c].member;

    // The server stops listing Bea, with no revocation: nothing changes in the group.
    sim.directory.retain(|m| m.id != bea);
    sim.serve_directory(&[a, c]);
    sim.run(20);
    sim.assert_one_group(&[a, b, c]);
    for d in [a, c] {
        assert!(
            distrusted(&sim, d).iter().any(
                |(m, _, why)| *m == bea && why.contains("without a revocation an admin signed")
            ),
            "{:?}",
            distrusted(&sim, d)
        );
    }
    sim.send(a, "still for Bea");
    sim.run(20);
    sim.assert_last_received(&[b, c], a, "still for Bea");

    // A revocation of Cid signed by the key of a member the chain admits, not an admin's,
    // removes no one either.
    let (mut rogue_key, rogue) = sim.admit(Role::Member);
    sim.directory.push(rogue.clone());
    let statement = DecisionStatement {
        decision: Decision::Revoke,
        circle: sim.circle,
        member: cid,
        issuer: rogue.id,
        issued_at: 1,
        key: None,
        keeps: None,
    };
    let forged = SignedDecision::sign(statement, "localhost", |r| rogue_key.sign_in(r, ORIGIN))
        .expect("the member's key signs");
    let listed = sim.directory.iter_mut().find(|m| m.id == cid).expect("Cid");
    listed.passkeys.clear();
    listed.proofs.clear();
    listed.revocation = Some(forged.to_blob());
    sim.serve_directory(&[a]);
    sim.run(20);
    sim.assert_one_group(&[a, b, c]);
    assert!(
        distrusted(&sim, a)
            .iter()
            .any(|(m, _, why)| *m == cid && why.contains("issuer is not an admin")),
        "{:?}",
        distrusted(&sim, a)
    );
}

/// The `KeysChanged` events a device said, as (member, added, removed, own).
fn key_changes(sim: &Sim, device: Uuid) -> Vec<(Uuid, Vec<Base64Url>, Vec<Base64Url>, bool)> {
    sim.devices[&device]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::KeysChanged {
                member,
                added,
                removed,
                own,
            } => Some((*member, added.clone(), removed.clone(), *own)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_members_keys_are_pinned_on_first_sight_and_every_change_is_said_once_marked_on_their_own() {
    let mut sim = Sim::new(31);
    let a = sim.member(Role::Admin, "Ada L.");
    sim.run(5);
    let (mut bea_key, bea_info) = sim.admit(Role::Member);
    let bea = bea_info.id;
    let first_key = bea_info.passkeys[0].clone();
    sim.directory.push(bea_info);
    let b = sim.device(&mut bea_key, bea, "Bea K.");
    sim.run(40);
    sim.assert_one_group(&[a, b]);
    assert!(key_changes(&sim, a).is_empty() && key_changes(&sim, b).is_empty());

    // Bea's first key endorses a spare; later the first key goes.
    let (_, spare) = new_member(Role::Member);
    let spare_key = spare.passkeys[0].clone();
    let endorsement = Endorsement::sign(bea, spare_key.clone(), "localhost", |r| {
        bea_key.sign_in(r, ORIGIN)
    })
    .expect("Bea's key signs");
    let refetch = |sim: &mut Sim| {
        sim.serve_directory(&[a, b]);
        sim.run(5);
    };
    let listed = sim.directory.iter_mut().find(|m| m.id == bea).expect("Bea");
    listed.passkeys.push(spare_key.clone());
    listed
        .proofs
        .push(KeyProof::Endorsement(endorsement).to_blob());
    refetch(&mut sim);
    let added = (bea, vec![spare_key.credential_id.clone()], vec![], false);
    assert_eq!(key_changes(&sim, a), vec![added.clone()]);
    assert_eq!(
        key_changes(&sim, b),
        vec![(bea, added.1.clone(), vec![], true)]
    );

    // The same directory again, and after a restart: nothing more to say (the pins are saved).
    refetch(&mut sim);
    sim.restart(a);
    sim.run(20);
    assert_eq!(key_changes(&sim, a), vec![added.clone()]);

    let listed = sim.directory.iter_mut().find(|m| m.id == bea).expect("Bea");
    listed.passkeys.retain(|k| *k != first_key);
    refetch(&mut sim);
    assert_eq!(
        key_changes(&sim, a).last(),
        Some(&(bea, vec![], vec![first_key.credential_id.clone()], false))
    );
    sim.assert_one_group(&[a, b]);
}

/// Ada (an admin), Cy, and Bea, whose key the test keeps: one device each, in one group. The
/// devices in the order Ada, Bea, Cy.
fn ada_cy_and_bea(seed: u64) -> (Sim, [Uuid; 3], (Uuid, SoftKey)) {
    let mut sim = Sim::new(seed);
    let a = sim.member(Role::Admin, "Ada L.");
    sim.run(5);
    let c = sim.member(Role::Member, "Cy D.");
    let (mut bea_key, bea_info) = sim.admit(Role::Member);
    let bea = bea_info.id;
    sim.directory.push(bea_info);
    let b = sim.device(&mut bea_key, bea, "Bea K.");
    sim.run(40);
    sim.assert_one_group(&[a, b, c]);
    (sim, [a, b, c], (bea, bea_key))
}

#[test]
fn an_older_directory_replayed_after_a_revocation_brings_no_one_back() {
    let (mut sim, [a, _, c], (bea, mut bea_key)) = ada_cy_and_bea(29);
    let refetch = |sim: &mut Sim| {
        sim.serve_directory(&[a, c]);
        sim.run(20);
    };
    let before = sim.directory.clone();
    sim.revoke(bea);
    refetch(&mut sim);
    sim.assert_one_group(&[a, c]);

    // The server serves the directory from before the revocation again, also after the devices
    // restart, and lets a new device of Bea's announce itself: no one adds it.
    sim.directory = before;
    sim.restart(a);
    sim.restart(c);
    refetch(&mut sim);
    let again = sim.device(&mut bea_key, bea, "Bea's new device");
    sim.run(40);
    assert!(
        !sim.engine(again).in_group(),
        "the revoked member came back"
    );
    sim.assert_one_group(&[a, c]);
    // The devices say what the directory tried, once each.
    for device in [a, c] {
        let replayed: Vec<_> = distrusted(&sim, device)
            .into_iter()
            .filter(|(member, _, reason)| *member == bea && reason.contains("lists them again"))
            .collect();
        assert_eq!(replayed.len(), 1, "{replayed:?}");
    }
}

#[test]
fn a_lost_keys_devices_are_removed_by_its_members_other_device_on_the_revocation_alone() {
    let (mut sim, [a, b, c], (bea, mut bea_key)) = ada_cy_and_bea(37);
    // Bea's first key endorses a second, which certifies her second device.
    let (mut lost_key, lost) = new_member(Role::Member);
    let lost = lost.passkeys[0].clone();
    let endorsement = Endorsement::sign(bea, lost.clone(), "localhost", |r| {
        bea_key.sign_in(r, ORIGIN)
    })
    .expect("Bea's key signs");
    let listed = sim.directory.iter_mut().find(|m| m.id == bea).expect("Bea");
    listed.passkeys.push(lost.clone());
    listed
        .proofs
        .push(KeyProof::Endorsement(endorsement).to_blob());
    // The devices' directories are from before the key: its device's KeyPackage makes them look
    // again, and they add it.
    let b2 = sim.device(&mut lost_key, bea, "Bea's phone");
    sim.run(40);
    sim.assert_one_group(&[a, b, c, b2]);

    // The phone and its key are lost. A revocation in Bea's name that her key did not sign, or
    // the server dropping the key, removes nothing.
    let circle = sim.circle;
    let revocation = |signing: &mut SoftKey, listed: &[MemberInfo]| {
        let statement = revocation(listed, (circle, bea, bea), Some(lost.clone()), 1);
        SignedDecision::sign(statement, "localhost", |r| signing.sign_in(r, ORIGIN))
            .expect("signs")
            .to_blob()
    };
    let (mut stranger, _) = new_member(Role::Member);
    let forged = revocation(&mut stranger, &sim.directory);
    let listed = sim.directory.iter_mut().find(|m| m.id == bea).expect("Bea");
    listed.passkeys.retain(|k| *k != lost);
    listed.proofs.push(forged.clone());
    sim.serve_directory(&[a, b, c]);
    sim.run(20);
    sim.assert_one_group(&[a, b, c, b2]);

    // Bea's first key signs the revocation: her own device removes the phone.
    let real = revocation(&mut bea_key, &sim.directory);
    let listed = sim.directory.iter_mut().find(|m| m.id == bea).expect("Bea");
    listed.proofs.retain(|p| *p != forged);
    listed.proofs.push(real);
    sim.serve_directory(&[a, b, c]);
    sim.run(40);
    assert!(!sim.engine(b2).in_group(), "the lost phone stayed");
    sim.assert_one_group(&[a, b, c]);
    sim.send(a, "after the phone was lost");
    sim.run(20);
    for device in [b, c] {
        assert_eq!(
            sim.received(device),
            vec![(a, "after the phone was lost".to_string())]
        );
    }
    assert!(
        sim.received(b2).is_empty(),
        "the phone read {:?}",
        sim.received(b2)
    );
}

/// The device whose session the server ends, as an expired session ends: by the socket's
/// `session_ended` frame, or a 401 on a fetch.
fn end_session(sim: &mut Sim, device: Uuid, by_frame: bool) {
    use tessera_wire::signal::ServerFrame;
    if by_frame {
        sim.frames.push_back((device, ServerFrame::SessionEnded));
    } else {
        let now = sim.now;
        sim.devices
            .get_mut(&device)
            .expect("device")
            .engine
            .handle_session_ended(now);
    }
}

#[test]
fn an_ended_session_is_renewed_by_the_device_key_and_the_device_carries_on() {
    for by_frame in [true, false] {
        let (mut sim, [a, b, c]) = circle_of_three(60);
        end_session(&mut sim, b, by_frame);
        // A second refusal while renewing asks for nothing more.
        end_session(&mut sim, b, false);
        sim.run(20);
        assert_eq!(sim.devices[&b].renewals, 1, "by frame: {by_frame}");
        assert_eq!(sim.engine(b).stopped(), None, "by frame: {by_frame}");
        assert!(
            sim.devices[&b]
                .events
                .iter()
                .any(|e| matches!(e, Event::SessionRenewed)),
            "by frame: {by_frame}"
        );
        // The renewed device is back online and in the group: it sends and receives.
        sim.send(a, "after the renewal");
        sim.run(40);
        sim.assert_last_received(&[b, c], a, "after the renewal");
        sim.send(b, "renewed, still here");
        sim.run(40);
        sim.assert_last_received(&[a, c], b, "renewed, still here");
        // Later, the session ends again: renewed again.
        end_session(&mut sim, b, by_frame);
        sim.run(20);
        assert_eq!(sim.devices[&b].renewals, 2, "by frame: {by_frame}");
        assert_eq!(sim.engine(b).stopped(), None, "by frame: {by_frame}");
    }
}

#[test]
fn a_device_whose_certifying_key_was_revoked_cannot_renew_and_says_its_session_ended() {
    use tessera_engine::StopReason;
    let (mut sim, [_, b, _]) = circle_of_three(61);
    // The server no longer lists the key that certified the device: the honest check refuses.
    let member = sim.devices[&b].member;
    let listed = sim
        .directory
        .iter_mut()
        .find(|m| m.id == member)
        .expect("listed");
    listed.passkeys.clear();
    end_session(&mut sim, b, true);
    sim.run(20);
    assert_eq!(sim.devices[&b].renewals, 1);
    assert_eq!(sim.engine(b).stopped(), Some(StopReason::SessionEnded));
}

#[test]
fn a_revoked_member_renewing_is_told_revoked_and_an_unreachable_server_is_asked_again() {
    use tessera_engine::StopReason;
    let (mut sim, [_, b, c]) = circle_of_three(62);
    sim.revoke(sim.devices[&b].member);
    end_session(&mut sim, b, false);
    sim.run(20);
    assert_eq!(sim.engine(b).stopped(), Some(StopReason::Revoked));

    sim.renewal = Some(RenewalOutcome::Unavailable);
    end_session(&mut sim, c, false);
    sim.run(2);
    assert_eq!(sim.devices[&c].renewals, 1);
    // Asked again after the retry delay (2 s), not before.
    sim.run(20);
    assert_eq!(sim.devices[&c].renewals, 1);
    sim.renewal = None;
    sim.run(20 * 2);
    assert_eq!(sim.devices[&c].renewals, 2);
    assert_eq!(sim.engine(c).stopped(), None);
}

/// A circle of Ada (admin) and Bea, who sent `ada` and `bea` messages from their devices; Bea's
/// key, to make her another device.
fn history_circle(seed: u64, ada: usize, bea: usize) -> (Sim, Uuid, Uuid, Uuid, SoftKey) {
    let mut sim = Sim::new(seed);
    let a = sim.member(Role::Admin, "Ada L.");
    sim.run(5);
    let (mut bea_key, info) = sim.admit(Role::Member);
    let bea_id = info.id;
    sim.directory.push(info);
    let b1 = sim.device(&mut bea_key, bea_id, "Bea K.");
    sim.run(40);
    sim.assert_one_group(&[a, b1]);
    for i in 0..ada {
        sim.send(a, &format!("from Ada {i}"));
        if i % 20 == 19 {
            sim.run(5);
        }
    }
    for i in 0..bea {
        sim.send(b1, &format!("from Bea {i}"));
    }
    sim.run(60);
    (sim, a, b1, bea_id, bea_key)
}

/// The texts of the history rows a device wrote, each (device, id) counted.
fn history_texts(sim: &Sim, device: Uuid) -> BTreeMap<String, usize> {
    let mut seen = BTreeSet::new();
    let mut texts = BTreeMap::new();
    for change in &sim.devices[&device].history {
        if let HistoryChange::Add { message, .. } = change
            && seen.insert((message.device, message.id))
        {
            *texts.entry(message.text.clone()).or_insert(0) += 1;
        }
    }
    texts
}

fn progress(sim: &Sim, device: Uuid) -> Vec<(Uuid, u64, u64, bool)> {
    sim.devices[&device]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::HistoryProgress {
                device,
                received,
                total,
                done,
            } => Some((*device, *received, *total, *done)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_members_new_device_gets_their_history_from_their_own_devices_only_with_progress() {
    let (mut sim, a, b1, bea, mut bea_key) = history_circle(70, 120, 30);
    let before = history_texts(&sim, b1);
    assert_eq!(before.len(), 150);
    // Bea's new device joins: it asks her other device, page by page, never Ada's.
    let b2 = sim.device(&mut bea_key, bea, "Bea K.");
    sim.run(120);
    sim.assert_one_group(&[a, b1, b2]);
    assert_eq!(history_texts(&sim, b2), before, "every message once");
    assert_eq!(
        sim.devices[&a].history_reads, 0,
        "Ada's device is not asked"
    );
    assert_eq!(sim.devices[&b1].history_reads, 2, "two pages of 100");
    let told = progress(&sim, b2);
    assert_eq!(
        told,
        [(b1, 100, 150, false), (b1, 150, 150, true)],
        "progress by page"
    );
    // The old device takes the new one's history too (what it lacks: nothing here).
    assert_eq!(progress(&sim, b1).last().map(|p| p.3), Some(true));
    assert_eq!(history_texts(&sim, b1), before);
    // Taken whole: a restart asks for nothing more.
    sim.restart(b2);
    sim.run(40);
    assert_eq!(progress(&sim, b2).len(), 2);
    assert_eq!(sim.devices[&b1].history_reads, 2);
}

#[test]
fn a_history_import_cut_short_resumes_after_a_restart_and_takes_each_message_once() {
    let (mut sim, _, b1, bea, mut bea_key) = history_circle(71, 250, 0);
    let b2 = sim.device(&mut bea_key, bea, "Bea K.");
    // Run until the first page is in, then restart the new device mid-import.
    for _ in 0..200 {
        sim.run(1);
        if !progress(&sim, b2).is_empty() {
            break;
        }
    }
    assert_eq!(
        progress(&sim, b2).len(),
        1,
        "one page in before the restart"
    );
    sim.restart(b2);
    sim.run(120);
    let texts = history_texts(&sim, b2);
    assert_eq!(texts.len(), 250);
    assert!(texts.values().all(|n| *n == 1), "each message once");
    let told = progress(&sim, b2);
    assert_eq!(told.last(), Some(&(b1, 250, 250, true)), "{told:?}");
}

/// A link message from `from` as `to` receives it over their link: as the next chunk in order
/// (the chunks before are already held, and only acknowledged again), until `to` says something.
fn inject_link_message(sim: &mut Sim, from: Uuid, to: Uuid, message: &[u8]) {
    let said = sim.devices[&to].events.len();
    for seq in 0..10_000 {
        let packet = encode_packet(&Packet::Chunk {
            seq,
            index: 0,
            count: 1,
            bytes: message.to_vec(),
        });
        let now = sim.now;
        let dev = sim.devices.get_mut(&to).expect("device");
        dev.engine.handle_link_data(now, from, &packet);
        sim.drain(to);
        if sim.devices[&to].events.len() > said {
            return;
        }
    }
    panic!("the message was never taken");
}

#[test]
fn history_to_or_from_another_members_device_or_out_of_order_is_refused_and_changes_nothing() {
    let (mut sim, a, b1, bea, mut bea_key) = history_circle(72, 3, 3);
    let b2 = sim.device(&mut bea_key, bea, "Bea K.");
    sim.run(120);
    let held = history_texts(&sim, b1);
    let forged = ChatMessage {
        id: Uuid::new_v4(),
        member: bea,
        device: b2,
        text: "a message Bea never wrote".into(),
        sent_at: 1,
        file: None,
        reply_to: None,
    };
    let page = |rows: Vec<ChatMessage>| {
        encode_history_message(&HistoryMessage::Page { rows, remaining: 0 })
    };
    // Ada's device (another member) hands Bea's device history, and asks for hers: refused.
    inject_link_message(&mut sim, a, b1, &page(vec![forged.clone()]));
    let reads = sim.devices[&b1].history_reads;
    inject_link_message(
        &mut sim,
        a,
        b1,
        &encode_history_message(&HistoryMessage::Ask { before: None }),
    );
    sim.run(5);
    assert_eq!(
        sim.devices[&b1].history_reads, reads,
        "nothing read for Ada"
    );
    let refusals: Vec<String> = sim
        .refused(b1)
        .into_iter()
        .filter(|r| r.starts_with("history"))
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(
        refusals.iter().all(|r| r.contains("own devices only")),
        "{refusals:?}"
    );
    // Bea's own device sends rows out of order, or a row from before 1970: refused whole.
    let later = ChatMessage {
        sent_at: 2,
        id: Uuid::new_v4(),
        ..forged.clone()
    };
    inject_link_message(&mut sim, b2, b1, &page(vec![forged.clone(), later]));
    let ancient = ChatMessage {
        sent_at: -5,
        ..forged.clone()
    };
    inject_link_message(&mut sim, b2, b1, &page(vec![ancient]));
    inject_link_message(&mut sim, b2, b1, &[2, 0xff, 0xff]);
    sim.run(5);
    let refusals: Vec<String> = sim
        .refused(b1)
        .into_iter()
        .filter(|r| r.starts_with("history"))
        .collect();
    assert_eq!(refusals.len(), 5, "{refusals:?}");
    assert_eq!(history_texts(&sim, b1), held, "no row taken");
}
