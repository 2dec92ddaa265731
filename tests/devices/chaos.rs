//! Chaos across a circle of `tessera chat` devices in the test's namespace: peer links cut and
//! mended at random (nftables drops the UDP between two devices' addresses), the server killed
//! and restarted mid-chat, a device killed as it sends. Every message its sender kept arrives
//! exactly once on every other device, in the order it was sent.
//!
//! The faults are drawn from a seed printed at the start; `CHAOS_SEED=N` replays a run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use crate::circle::Circle;
use crate::support::{Chat, Net, PATIENCE, inside_namespace, unique, wait_converged};

/// Devices in the circle.
const DEVICES: usize = 4;

/// How often each device may type, and the chance that it does at each chance.
const TICK: Duration = Duration::from_millis(150);
const TYPING: f64 = 0.2;

/// A message's text: the run, its sender and its place in what the sender typed.
fn text_of(run: &str, sender: usize, n: u32) -> String {
    format!("chaos {run} s{sender} n{n:04}")
}

/// The sender and place of a message of this run.
fn parse(run: &str, text: &str) -> Option<(usize, u32)> {
    let mut words = text.strip_prefix("chaos ")?.split(' ');
    if words.next()? != run {
        return None;
    }
    let sender = words.next()?.strip_prefix('s')?.parse().ok()?;
    let n = words.next()?.strip_prefix('n')?.parse().ok()?;
    Some((sender, n))
}

/// The circle under test, with every fault the test can inflict.
struct Chaos {
    circle: Circle,
    net: Net,
    /// Draws the faults (the seed replays them in the same order).
    faults: StdRng,
    /// Draws who types when (apart, so that timing does not shift the faults).
    typing: StdRng,
    run: String,
    /// Each device's running chat (`None` while it is killed), and the sessions it had before.
    chats: Vec<Option<Chat>>,
    ended: Vec<Vec<Chat>>,
    /// What each device typed, in order.
    typed: Vec<Vec<u32>>,
    /// Cut pairs and when they mend.
    cuts: BTreeMap<(usize, usize), Instant>,
}

impl Chaos {
    fn address(device: usize) -> IpAddr {
        // Each device's own loopback address: 127.0.0.2, .3, …
        IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + u8::try_from(device).expect("few"),
        ))
    }

    /// Types the next message of `device`.
    fn say(&mut self, device: usize) {
        let Some(chat) = self.chats[device].as_mut() else {
            return;
        };
        let n = u32::try_from(self.typed[device].len()).expect("few");
        chat.say(&text_of(&self.run, device, n));
        self.typed[device].push(n);
    }

    /// Every device types at random for `duration`; cuts mend when their time is up.
    fn chatter(&mut self, duration: Duration) {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            self.mend_due();
            for device in 0..DEVICES {
                if self.typing.gen_bool(TYPING) {
                    self.say(device);
                }
            }
            std::thread::sleep(TICK);
        }
    }

    /// Cuts the link of a random pair of devices for `duration`.
    fn cut_random(&mut self, duration: Duration) {
        let a = self.faults.gen_range(0..DEVICES);
        let b = (a + self.faults.gen_range(1..DEVICES)) % DEVICES;
        let pair = (a.min(b), a.max(b));
        if !self.cuts.contains_key(&pair) {
            self.net
                .set("add", Self::address(pair.0), Self::address(pair.1));
        }
        eprintln!("chaos: cut {pair:?} for {duration:?}");
        // A pair already cut stays cut until the later of its two ends.
        let until = self.cuts.entry(pair).or_insert_with(Instant::now);
        *until = (*until).max(Instant::now() + duration);
    }

    fn mend_due(&mut self) {
        let now = Instant::now();
        let due: Vec<_> = self
            .cuts
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(pair, _)| *pair)
            .collect();
        for pair in due {
            self.net
                .set("delete", Self::address(pair.0), Self::address(pair.1));
            self.cuts.remove(&pair);
        }
    }

    fn mend_all(&mut self) {
        for until in self.cuts.values_mut() {
            *until = Instant::now();
        }
        self.mend_due();
    }

    /// Every session of `device` so far, oldest first.
    fn sessions(&self, device: usize) -> impl Iterator<Item = &Chat> {
        self.ended[device].iter().chain(self.chats[device].iter())
    }

    /// Messages of this run stored on `device`: `(sender, n, outgoing)`, from `tessera history`.
    fn history(&self, device: usize) -> Vec<(usize, u32, bool)> {
        let printed = self.circle.devices[device].ok(&["history", "--limit", "100000"]);
        printed
            .lines()
            .filter_map(|line| {
                let (_, text) = line.split_once(": ")?;
                let outgoing = text.ends_with(')') && text.contains("  (delivered to ");
                let text = text.split("  (delivered to ").next()?;
                let (sender, n) = parse(&self.run, text)?;
                Some((sender, n, outgoing))
            })
            .collect()
    }
}

#[test]
fn under_chaos_every_message_arrives_exactly_once_in_its_senders_order() {
    if !inside_namespace(
        "chaos::under_chaos_every_message_arrives_exactly_once_in_its_senders_order",
    ) {
        return;
    }
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("chaos: seed {seed} (CHAOS_SEED={seed} replays these faults)");
    let mut circle = Circle::new(DEVICES);
    for (i, device) in circle.devices.iter_mut().enumerate() {
        device.bind = Chaos::address(i);
    }
    let chats = (0..DEVICES).map(|i| Some(circle.chat(i))).collect();
    let mut chaos = Chaos {
        circle,
        net: Net::new(),
        faults: StdRng::seed_from_u64(seed),
        typing: StdRng::seed_from_u64(seed.rotate_left(32)),
        run: unique(),
        chats,
        ended: (0..DEVICES).map(|_| Vec::new()).collect(),
        typed: vec![Vec::new(); DEVICES],
        cuts: BTreeMap::new(),
    };
    {
        let mut all: Vec<&mut Chat> = chaos.chats.iter_mut().flatten().collect();
        wait_converged(&mut all, DEVICES);
    }

    // 1. Links cut and mended at random while everyone types; one cut outlasts the links' own
    //    consent checks, so that link dies and is negotiated again.
    chaos.cut_random(Duration::from_secs(35));
    for _ in 0..8 {
        let hold = Duration::from_millis(chaos.faults.gen_range(500..5000));
        chaos.cut_random(hold);
        let typing = Duration::from_millis(chaos.faults.gen_range(1000..4000));
        chaos.chatter(typing);
    }

    // 2. The server killed mid-chat (a link cut meanwhile, which cannot be negotiated again until
    //    the server is back), then restarted.
    eprintln!("chaos: the server is killed");
    chaos.circle.stop_server();
    chaos.cut_random(Duration::from_secs(4));
    chaos.chatter(Duration::from_secs(5));
    eprintln!("chaos: the server restarts");
    chaos.circle.start_server();
    chaos.chatter(Duration::from_secs(4));
    for chat in chaos.chats.iter_mut().flatten() {
        chat.wait_for("the lost server", |v| v["event"] == "disconnected");
        chat.next_matching("the reconnection", |v| v["event"] == "connected");
    }

    // 3. A device killed as it sends, while another sends it a burst; it comes back later.
    let victim = chaos.faults.gen_range(0..DEVICES);
    let burster = (victim + 1) % DEVICES;
    for _ in 0..10 {
        chaos.say(burster);
    }
    chaos.say(victim);
    let in_flight = Duration::from_millis(chaos.faults.gen_range(0..60));
    std::thread::sleep(in_flight);
    eprintln!("chaos: device {victim} is killed");
    let mut killed = chaos.chats[victim].take().expect("the victim runs");
    killed.kill();
    chaos.ended[victim].push(killed);
    chaos.chatter(Duration::from_secs(3));
    chaos.chats[victim] = Some(chaos.circle.chat(victim));
    chaos.chatter(Duration::from_secs(4));

    // Calm: everything mends and the circle settles.
    chaos.mend_all();
    {
        let mut all: Vec<&mut Chat> = chaos.chats.iter_mut().flatten().collect();
        wait_converged(&mut all, DEVICES);
    }

    // What each sender kept is what it must deliver: its stored outgoing messages.
    let sent: Vec<BTreeSet<u32>> = (0..DEVICES)
        .map(|s| {
            chaos
                .history(s)
                .into_iter()
                .filter(|(sender, _, outgoing)| *sender == s && *outgoing)
                .map(|(_, n, _)| n)
                .collect()
        })
        .collect();
    for (s, kept) in sent.iter().enumerate() {
        let typed: BTreeSet<u32> = chaos.typed[s].iter().copied().collect();
        assert!(
            kept.is_subset(&typed),
            "device {s} kept what it never typed"
        );
        // Everything the chat showed as sent was stored before it was shown: it survives a kill.
        let shown: BTreeSet<u32> = chaos
            .sessions(s)
            .flat_map(|c| c.events("message"))
            .filter(|e| e["outgoing"] == true)
            .filter_map(|e| parse(&chaos.run, e["text"].as_str()?))
            .map(|(_, n)| n)
            .collect();
        assert!(
            shown.is_subset(kept),
            "device {s} showed as sent messages it did not keep: {:?}",
            shown.difference(kept).collect::<Vec<_>>()
        );
        if s != victim {
            assert_eq!(*kept, typed, "device {s} kept every message it was given");
        }
    }
    eprintln!(
        "chaos: {} messages kept by their senders ({:?} typed)",
        sent.iter().map(BTreeSet::len).sum::<usize>(),
        chaos.typed.iter().map(Vec::len).collect::<Vec<_>>()
    );

    // Every device stores every other sender's messages, once.
    let deadline = Instant::now() + PATIENCE;
    for r in 0..DEVICES {
        loop {
            let stored = chaos.history(r);
            let missing: Vec<(usize, u32)> = (0..DEVICES)
                .filter(|s| *s != r)
                .flat_map(|s| sent[s].iter().map(move |n| (s, *n)))
                .filter(|(s, n)| !stored.iter().any(|(ss, nn, _)| ss == s && nn == n))
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "device {r} never received {missing:?} (seed {seed})"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    // And every device showed them once each, in their sender's order (a device killed between
    // storing a message and showing it may have shown fewer: it stored them all, checked above).
    for chat in chaos.chats.iter_mut().flatten() {
        chat.drain(Duration::from_secs(1));
    }
    for r in 0..DEVICES {
        let shown: Vec<(usize, u32)> = chaos
            .sessions(r)
            .flat_map(|c| c.events("message"))
            .filter(|e| e["outgoing"] == false)
            .filter_map(|e| parse(&chaos.run, e["text"].as_str()?))
            .collect();
        for s in (0..DEVICES).filter(|s| *s != r) {
            let from: Vec<u32> = shown
                .iter()
                .filter(|(sender, _)| *sender == s)
                .map(|(_, n)| *n)
                .collect();
            assert!(
                from.windows(2).all(|w| w[0] < w[1]),
                "device {r} showed device {s}'s messages out of order or twice: {from:?} \
                 (seed {seed})"
            );
            let from: BTreeSet<u32> = from.into_iter().collect();
            assert!(
                from.is_subset(&sent[s]),
                "device {r} showed unsent messages"
            );
            if r != victim {
                assert_eq!(
                    from, sent[s],
                    "device {r} showed every message of device {s} (seed {seed})"
                );
            }
        }
    }
    let links_down: usize = (0..DEVICES)
        .flat_map(|r| chaos.sessions(r))
        .map(|c| c.events("link_down").len())
        .sum();
    eprintln!("chaos: {links_down} links went down and came back");
    assert!(links_down > 0, "a cut outlasted a link, which went down");

    // Each device ends cleanly.
    for chat in chaos.chats.into_iter().flatten() {
        let (status, stderr) = chat.quit();
        assert!(status.success(), "chat ended badly: {stderr}");
    }
}
