//! What members say about messages and themselves, between in-memory devices of the simulated
//! circle: replies, reactions, edits and deletions (every device shows a message alike once its
//! changes arrive, whatever their order, and what a member may not do, such as editing or
//! deleting another's message, changes nothing anywhere), and display names (a look-alike of
//! another member's name is told apart everywhere, a rename is said, a name that is no name is
//! refused).

#[allow(dead_code)]
mod sim;

use std::sync::atomic::{AtomicI64, Ordering};

use sim::Sim;
use tessera_engine::changes::{Change, ChangeError, MessageRef, Reaction, ShownMessage};
use tessera_engine::names::{NameError, member_words};
use tessera_engine::{EngineError, Event, HistoryChange};
use tessera_wire::Role;
use uuid::Uuid;

/// Ada (an admin), Bea and Cy, each with one device, in one group and linked.
fn circle(seed: u64) -> (Sim, [Uuid; 3]) {
    let mut sim = Sim::new(seed);
    let a = sim.member(Role::Admin, "Ada");
    sim.run(5);
    let b = sim.member(Role::Member, "Bea");
    let c = sim.member(Role::Member, "Cy");
    sim.run(60);
    sim.assert_one_group(&[a, b, c]);
    (sim, [a, b, c])
}

fn member(sim: &Sim, device: Uuid) -> Uuid {
    sim.engine(device).view().member
}

/// The reference to the message `id` that `device` sent.
fn message(sim: &Sim, device: Uuid, id: Uuid) -> MessageRef {
    MessageRef {
        member: member(sim, device),
        device,
        id,
    }
}

/// The senders' clocks: each change a second after the one before.
static CLOCK: AtomicI64 = AtomicI64::new(1_700_000_001_000);

/// Has `device` make `change` to `target` now.
fn change(sim: &mut Sim, device: Uuid, target: MessageRef, change: Change) -> Uuid {
    let now = sim.now;
    let unix_ms = CLOCK.fetch_add(1_000, Ordering::Relaxed);
    let id = sim
        .devices
        .get_mut(&device)
        .expect("device")
        .engine
        .change_message(now, unix_ms, target, change)
        .expect("the change is made");
    sim.drain(device);
    id
}

/// What `device` shows of the message `id`.
fn shown(sim: &Sim, device: Uuid, id: Uuid) -> ShownMessage {
    sim.devices[&device]
        .shown()
        .into_iter()
        .find(|s| s.message.id == id)
        .expect("the message is shown")
}

fn react(emoji: &str) -> Change {
    Change::React {
        emoji: emoji.to_owned(),
    }
}

#[test]
fn replies_reactions_edits_and_deletions_reach_every_device_and_show_alike() {
    let (mut sim, [a, b, c]) = circle(71);
    let question = sim.send(a, "Lunch at noon?");
    sim.run(10);
    let lunch = message(&sim, a, question);
    let answer = sim.reply(b, "Yes, the usual place", Some(lunch));
    change(&mut sim, c, lunch, react("👍"));
    change(&mut sim, b, lunch, react("👍"));
    change(
        &mut sim,
        a,
        lunch,
        Change::Edit {
            text: "Lunch at one?".into(),
        },
    );
    sim.run(20);
    for device in [a, b, c] {
        let lunch_here = shown(&sim, device, question);
        assert_eq!(lunch_here.message.text, "Lunch at one?", "at {device}");
        assert!(lunch_here.edited);
        assert_eq!(
            lunch_here.reactions,
            vec![Reaction {
                emoji: "👍".into(),
                members: vec![member(&sim, c), member(&sim, b)],
            }],
            "at {device}"
        );
        assert_eq!(
            shown(&sim, device, answer).message.reply_to,
            Some(lunch),
            "at {device}"
        );
        assert!(sim.refused(device).is_empty(), "{:?}", sim.refused(device));
    }
    // Cy takes his reaction back, then Ada deletes her message for everyone.
    change(
        &mut sim,
        c,
        lunch,
        Change::Unreact {
            emoji: "👍".into()
        },
    );
    sim.run(10);
    assert_eq!(
        shown(&sim, a, question).reactions[0].members,
        vec![member(&sim, b)]
    );
    change(&mut sim, a, lunch, Change::Delete);
    sim.run(10);
    for device in [a, b, c] {
        let gone = shown(&sim, device, question);
        assert!(gone.deleted, "at {device}");
        assert_eq!(gone.message.text, "", "at {device}");
        assert!(gone.reactions.is_empty());
        assert!(sim.devices[&device].events.iter().any(|e| matches!(e,
            Event::MessageChanged { change } if change.change == Change::Delete)));
    }
}

#[test]
fn a_change_that_reaches_a_device_away_through_another_shows_there_as_everywhere() {
    let (mut sim, [a, b, c]) = circle(72);
    sim.go_offline(c);
    sim.run(5);
    let note = sim.send(a, "The minutes are in the shared folder");
    sim.run(10);
    let target = message(&sim, a, note);
    change(&mut sim, b, target, react("🙏"));
    change(
        &mut sim,
        a,
        target,
        Change::Edit {
            text: "The minutes are in the board folder".into(),
        },
    );
    sim.run(10);
    // Ada leaves before Cy is back: Bea carries Ada's message, its edit and her reaction.
    sim.go_offline(a);
    sim.run(5);
    sim.connect(c);
    sim.run(60);
    let there = shown(&sim, c, note);
    assert_eq!(there.message.text, "The minutes are in the board folder");
    assert_eq!(there.reactions.len(), 1);
    assert_eq!(there, shown(&sim, b, note));
    assert!(sim.refused(c).is_empty(), "{:?}", sim.refused(c));
}

#[test]
fn the_engine_refuses_to_make_a_malformed_change_or_to_change_another_members_message() {
    let (mut sim, [a, b, _]) = circle(73);
    let hers = sim.send(a, "Ada's words");
    sim.run(10);
    let target = message(&sim, a, hers);
    let writes_before = sim.devices[&b].history.len();
    let now = sim.now;
    let bea = &mut sim.devices.get_mut(&b).expect("b").engine;
    for (change, why) in [
        (Change::Delete, ChangeError::NotAuthor),
        (
            Change::Edit {
                text: "Bea's words".into(),
            },
            ChangeError::NotAuthor,
        ),
        (react("two words"), ChangeError::BadReaction),
        (react(""), ChangeError::BadReaction),
    ] {
        assert!(
            matches!(
                bea.change_message(now, 1, target, change.clone()),
                Err(EngineError::Change(refused)) if refused == why
            ),
            "{change:?}"
        );
    }
    sim.drain(b);
    sim.run(10);
    assert_eq!(sim.devices[&b].history.len(), writes_before, "nothing kept");
    assert_eq!(shown(&sim, a, hers).message.text, "Ada's words");
    assert!(!shown(&sim, a, hers).deleted);
}

#[test]
fn an_edit_or_deletion_of_another_members_message_from_a_modified_client_is_refused_everywhere() {
    let (mut sim, [a, b, c]) = circle(74);
    let hers = sim.send(a, "Please wire nothing until Monday.");
    sim.run(10);
    let target = message(&sim, a, hers);
    for forged in [
        Change::Edit {
            text: "Please wire the settlement funds today.".into(),
        },
        Change::Delete,
        react(" "),
    ] {
        let now = sim.now;
        sim.devices
            .get_mut(&b)
            .expect("b")
            .engine
            .change_message_unchecked(now, 1_700_000_002_000, target, forged)
            .expect("a modified client sends anything");
        sim.drain(b);
        sim.run(10);
    }
    for device in [a, c] {
        let here = shown(&sim, device, hers);
        assert_eq!(here.message.text, "Please wire nothing until Monday.");
        assert!(!here.edited && !here.deleted);
        assert_eq!(
            sim.refused(device)
                .iter()
                .filter(|r| r.contains("change to a message"))
                .count(),
            3,
            "each refused at {device}: {:?}",
            sim.refused(device)
        );
        assert!(
            !sim.devices[&device]
                .history
                .iter()
                .any(|h| matches!(h, HistoryChange::Change { .. })),
            "nothing of them kept at {device}"
        );
    }
}

#[test]
fn a_change_that_names_its_sender_as_the_author_of_another_members_message_changes_nothing() {
    let (mut sim, [a, b, c]) = circle(75);
    let hers = sim.send(a, "The meeting is at ten.");
    sim.run(10);
    // Bea names Ada's message (her device, its id) but herself as its author: every engine lets
    // a member delete "her own" message, and the history's key leads to Ada's, which is not hers.
    let lie = MessageRef {
        member: member(&sim, b),
        ..message(&sim, a, hers)
    };
    change(&mut sim, b, lie, Change::Delete);
    change(
        &mut sim,
        b,
        lie,
        Change::Edit {
            text: "The meeting is cancelled.".into(),
        },
    );
    sim.run(10);
    for device in [a, b, c] {
        let here = shown(&sim, device, hers);
        assert_eq!(here.message.text, "The meeting is at ten.", "at {device}");
        assert!(!here.deleted && !here.edited, "at {device}");
    }
}

#[test]
fn a_reaction_to_a_message_that_does_not_exist_shows_nowhere() {
    let (mut sim, [a, b, c]) = circle(76);
    let real = sim.send(a, "a real message");
    sim.run(10);
    let nothing = MessageRef {
        member: member(&sim, a),
        device: a,
        id: Uuid::new_v4(),
    };
    change(&mut sim, b, nothing, react("🎉"));
    sim.run(10);
    for device in [a, b, c] {
        let shown = sim.devices[&device].shown();
        assert_eq!(shown.len(), 1, "no message made up at {device}");
        assert!(shown.iter().all(|s| s.reactions.is_empty()), "at {device}");
        assert_eq!(shown[0].message.id, real);
    }
}

#[test]
fn changes_sent_by_a_device_that_restarts_between_them_each_arrive() {
    let (mut sim, [a, b, _]) = circle(77);
    let hers = sim.send(a, "first");
    sim.run(10);
    let target = message(&sim, a, hers);
    for (n, emoji) in ["🎉", "👍", "🙏"].into_iter().enumerate() {
        sim.restart(a);
        sim.run(20);
        change(&mut sim, a, target, react(emoji));
        sim.run(20);
        assert_eq!(
            shown(&sim, b, hers).reactions.len(),
            n + 1,
            "{:?}",
            sim.refused(b)
        );
    }
}

#[test]
fn a_member_who_takes_another_members_name_is_told_apart_everywhere_and_renames_are_said() {
    let (mut sim, [a, b, c]) = circle(78);
    let now = sim.now;
    sim.devices
        .get_mut(&b)
        .expect("b")
        .engine
        .set_display_name(now, "Ada")
        .expect("any name a member likes");
    sim.drain(b);
    sim.run(10);
    let (ada, bea) = (member(&sim, a), member(&sim, b));
    for device in [a, b, c] {
        let names = sim.engine(device).view().names;
        assert_eq!(
            names[&ada],
            format!("Ada ({})", member_words(ada)),
            "at {device}"
        );
        assert_eq!(
            names[&bea],
            format!("Ada ({})", member_words(bea)),
            "at {device}"
        );
    }
    let renamed = |sim: &Sim, device: Uuid| -> Vec<(String, String)> {
        sim.devices[&device]
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Renamed { member, from, to } if *member == bea => {
                    Some((from.clone(), to.clone()))
                }
                _ => None,
            })
            .collect()
    };
    let told = vec![("Bea".to_owned(), format!("Ada ({})", member_words(bea)))];
    assert_eq!(renamed(&sim, a), told);
    assert_eq!(renamed(&sim, c), told);
    assert!(renamed(&sim, b).is_empty(), "her own device is not told");
}

#[test]
fn a_name_that_is_no_name_is_refused_by_the_engine_and_by_every_receiver() {
    let (mut sim, [a, b, c]) = circle(79);
    let now = sim.now;
    let bea = &mut sim.devices.get_mut(&b).expect("b").engine;
    for (name, why) in [
        ("  ", NameError::Empty),
        ("Ada\u{202E}ecalevoL", NameError::Hidden),
        (
            "a name far longer than sixty-four characters, which no one reads whole",
            NameError::TooLong,
        ),
    ] {
        assert!(
            matches!(bea.set_display_name(now, name), Err(EngineError::Name(e)) if e == why),
            "{name:?}"
        );
    }
    assert_eq!(bea.view().display_name.as_deref(), Some("Bea"));
    bea.set_display_name_unchecked(now, "Ada\u{200B}")
        .expect("a modified client sends anything");
    sim.drain(b);
    sim.run(10);
    let bea = member(&sim, b);
    for device in [a, c] {
        assert_eq!(sim.engine(device).view().names[&bea], "Bea", "at {device}");
        assert!(
            sim.refused(device)
                .iter()
                .any(|r| r.starts_with("display name")),
            "{:?}",
            sim.refused(device)
        );
    }
}
