//! History for a member's new device: a device asks each other device of its own member, over
//! their peer link (DTLS whose fingerprints the two exchanged inside MLS: end to end, and never
//! through the server), for the history that device holds, newest first, one page at a time. It
//! takes pages from its own member's devices only, answers its own member's devices only, and
//! resumes where it stopped after a dropped link or a restart.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::engine::{ChatMessage, LATEST_SENT_AT};

/// The most rows a page holds (and a driver reads for one).
pub const PAGE_ROWS: usize = 100;

/// A page stops growing past this many bytes of text (it holds at least one row).
pub const PAGE_BYTES: usize = 256 * 1024;

/// The most devices of its own member a device keeps import progress for.
const SOURCES: usize = 64;

/// Where a page starts: rows strictly older than this, in the order `(sent_at, device, id)`, the
/// order every store lists its history by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cursor {
    /// When the row's message was written (ms since the Unix epoch, by its sender's clock).
    pub sent_at: i64,
    /// Its sending device.
    pub device: Uuid,
    /// Its id.
    pub id: Uuid,
}

impl Cursor {
    /// The place of `message` in the order.
    #[must_use]
    pub fn of(message: &ChatMessage) -> Cursor {
        Cursor {
            sent_at: message.sent_at,
            device: message.device,
            id: message.id,
        }
    }
}

/// What two devices of one member say about history over their link: link message type 2,
/// `2 ‖ postcard(HistoryMessage)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryMessage {
    /// Asks for the rows older than `before` (from the newest, when none), newest first.
    Ask {
        /// Where the page starts.
        before: Option<Cursor>,
    },
    /// A page of rows, newest first, and how many older rows remain after it.
    Page {
        /// The rows.
        rows: Vec<ChatMessage>,
        /// How many rows older than the last remain.
        remaining: u64,
    },
}

/// What a device knows of importing one of its member's other devices' history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The oldest row taken so far: the next page starts there.
    pub before: Option<Cursor>,
    /// Rows taken so far.
    pub received: u64,
    /// Whether that device said nothing older remains.
    pub done: bool,
}

/// Importing history from the member's other devices (saved with the engine's state), and which of
/// them are asked now (not saved: asked again after a restart).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HistoryImport {
    sources: BTreeMap<Uuid, Source>,
    #[serde(skip)]
    asking: BTreeSet<Uuid>,
}

/// Why a page was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// More rows than a page holds.
    #[error("a history page holds more than {PAGE_ROWS} rows")]
    TooLong,
    /// Rows not newest first.
    #[error("history rows out of order")]
    OutOfOrder,
    /// A row written before 1970 or far in the future.
    #[error("a history row's time is out of range")]
    BadTime,
}

impl PageError {
    /// What is wrong, as a refusal names it.
    #[must_use]
    pub fn what(self) -> &'static str {
        match self {
            PageError::TooLong => "history page (too many rows)",
            PageError::OutOfOrder => "history page (rows out of order)",
            PageError::BadTime => "history page (a time out of range)",
        }
    }
}

/// What a page brought: the rows new to this device, and the progress to tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The rows older than what was taken from that device before.
    pub rows: Vec<ChatMessage>,
    /// Rows taken from that device so far.
    pub received: u64,
    /// `received` and what remains.
    pub total: u64,
    /// Whether nothing older remains there.
    pub done: bool,
    /// The next ask to send it, when it was asked for this page and more remains.
    pub ask_again: Option<HistoryMessage>,
}

impl HistoryImport {
    /// The link to `peer`, another device of this member, came up: the ask to send it, unless
    /// its history was taken whole already or it is asked now.
    pub fn link_up(&mut self, peer: Uuid) -> Option<HistoryMessage> {
        let source = self.sources.get(&peer).cloned().unwrap_or_default();
        if source.done || !self.asking.insert(peer) {
            return None;
        }
        Some(HistoryMessage::Ask {
            before: source.before,
        })
    }

    /// The link to `peer` went down: asked again when it comes back.
    pub fn link_down(&mut self, peer: Uuid) {
        self.asking.remove(&peer);
    }

    /// A page from `peer`, another device of this member: checked whole, then the rows older
    /// than those taken from it before.
    ///
    /// # Errors
    /// Why the page is refused; nothing of it is taken, and `peer` is not asked again until its
    /// link comes back.
    pub fn take(
        &mut self,
        peer: Uuid,
        rows: Vec<ChatMessage>,
        remaining: u64,
    ) -> Result<Taken, PageError> {
        let refused = |this: &mut HistoryImport, error| {
            this.asking.remove(&peer);
            Err(error)
        };
        if rows.len() > PAGE_ROWS {
            return refused(self, PageError::TooLong);
        }
        if rows
            .iter()
            .any(|r| !(0..=LATEST_SENT_AT).contains(&r.sent_at))
        {
            return refused(self, PageError::BadTime);
        }
        if rows
            .windows(2)
            .any(|pair| Cursor::of(&pair[1]) >= Cursor::of(&pair[0]))
        {
            return refused(self, PageError::OutOfOrder);
        }
        self.bound();
        // An empty page ends it whatever it says remains (a store may count ties it never lists).
        let done = remaining == 0 || rows.is_empty();
        let source = self.sources.entry(peer).or_default();
        let before = source.before;
        let rows: Vec<ChatMessage> = rows
            .into_iter()
            .filter(|r| before.is_none_or(|b| Cursor::of(r) < b))
            .collect();
        if let Some(last) = rows.last() {
            source.before = Some(Cursor::of(last));
        }
        source.received += rows.len() as u64;
        source.done = done;
        let (received, done) = (source.received, source.done);
        let next = source.before;
        let ask_again = if done {
            self.asking.remove(&peer);
            None
        } else if self.asking.contains(&peer) {
            Some(HistoryMessage::Ask { before: next })
        } else {
            None
        };
        Ok(Taken {
            rows,
            received,
            total: received.saturating_add(remaining),
            done,
            ask_again,
        })
    }

    /// Keeps progress for at most [`SOURCES`] devices: those done go first.
    fn bound(&mut self) {
        while self.sources.len() >= SOURCES {
            let drop = self
                .sources
                .iter()
                .find(|(_, s)| s.done)
                .or_else(|| self.sources.iter().next())
                .map(|(d, _)| *d);
            match drop {
                Some(device) => self.sources.remove(&device),
                None => return,
            };
        }
    }
}

/// The page to answer an ask with, from the rows a store read (newest first, at most
/// [`PAGE_ROWS`]) and how many rows it holds older than the ask's start (those read included):
/// as many rows as fit [`PAGE_BYTES`], at least one.
#[must_use]
pub fn page(mut rows: Vec<ChatMessage>, older: u64) -> HistoryMessage {
    rows.truncate(PAGE_ROWS);
    let mut bytes = 0;
    let fit = rows
        .iter()
        .position(|r| {
            bytes += r.text.len();
            bytes > PAGE_BYTES
        })
        .map_or(rows.len(), |at| at.max(1));
    rows.truncate(fit);
    HistoryMessage::Page {
        remaining: older.saturating_sub(rows.len() as u64),
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sent_at: i64, text: &str) -> ChatMessage {
        ChatMessage {
            id: Uuid::new_v4(),
            member: Uuid::nil(),
            device: Uuid::nil(),
            text: text.to_owned(),
            sent_at,
            file: None,
            reply_to: None,
        }
    }

    #[test]
    fn pages_are_taken_newest_first_and_resume_where_they_stopped() {
        let peer = Uuid::new_v4();
        let mut import = HistoryImport::default();
        assert_eq!(
            import.link_up(peer),
            Some(HistoryMessage::Ask { before: None })
        );
        assert_eq!(import.link_up(peer), None, "asked once at a time");
        let first = vec![row(30, "c"), row(20, "b")];
        let taken = import.take(peer, first.clone(), 1).expect("taken");
        assert_eq!(taken.rows, first);
        assert_eq!((taken.received, taken.total, taken.done), (2, 3, false));
        let before = Some(Cursor::of(&first[1]));
        assert_eq!(taken.ask_again, Some(HistoryMessage::Ask { before }));
        // The link drops; when it comes back the ask resumes after what was taken.
        import.link_down(peer);
        assert_eq!(import.link_up(peer), Some(HistoryMessage::Ask { before }));
        // A page repeated (queued before a restart) brings nothing twice.
        let again = import.take(peer, first, 1).expect("taken");
        assert!(again.rows.is_empty());
        let last = import.take(peer, vec![row(10, "a")], 0).expect("taken");
        assert_eq!((last.received, last.total, last.done), (3, 3, true));
        assert_eq!(last.ask_again, None);
        import.link_down(peer);
        assert_eq!(import.link_up(peer), None, "taken whole: never asked again");
    }

    #[test]
    fn a_page_out_of_order_too_long_or_out_of_time_is_refused_whole() {
        let peer = Uuid::new_v4();
        let mut import = HistoryImport::default();
        import.link_up(peer);
        assert_eq!(
            import.take(peer, vec![row(10, "a"), row(20, "b")], 0),
            Err(PageError::OutOfOrder)
        );
        let twice = row(10, "a");
        assert_eq!(
            import.take(peer, vec![twice.clone(), twice], 0),
            Err(PageError::OutOfOrder)
        );
        assert_eq!(
            import.take(peer, vec![row(-1, "a")], 0),
            Err(PageError::BadTime)
        );
        let long = (0..=PAGE_ROWS as i64).rev().map(|t| row(t, "x")).collect();
        assert_eq!(import.take(peer, long, 0), Err(PageError::TooLong));
        // Nothing was taken, and the source is not marked done.
        assert_eq!(
            import.link_up(peer),
            Some(HistoryMessage::Ask { before: None })
        );
    }

    #[test]
    fn a_page_holds_what_fits_and_counts_what_remains() {
        let rows: Vec<ChatMessage> = (0..3)
            .map(|t| row(10 - t, &"x".repeat(PAGE_BYTES / 2)))
            .collect();
        let HistoryMessage::Page {
            rows: held,
            remaining,
        } = page(rows.clone(), 10)
        else {
            panic!("a page");
        };
        assert_eq!(held, rows[..2]);
        assert_eq!(remaining, 8);
        let huge = vec![row(1, &"x".repeat(PAGE_BYTES * 2))];
        let HistoryMessage::Page {
            rows: held,
            remaining,
        } = page(huge, 1)
        else {
            panic!("a page");
        };
        assert_eq!((held.len(), remaining), (1, 0), "one row always goes");
    }
}
