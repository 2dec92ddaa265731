//! Searching a device's own history, the same way in both clients: which messages a query finds.
//! The history never leaves the device for it; each client reads its store and asks this module.

use crate::changes::ShownMessage;

/// The most messages one search returns.
pub const RESULTS: usize = 200;

/// What a member typed to search for: its words, each to be found in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    words: Vec<String>,
}

impl Query {
    /// The query `text` makes: its words in lower case; none when it holds no word.
    #[must_use]
    pub fn new(text: &str) -> Option<Query> {
        let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
        (!words.is_empty()).then_some(Query { words })
    }

    /// Whether `message` (as its changes leave it) holds every word of the query, in any case
    /// and order, in its text or the name of the file it shares. A deleted message holds nothing.
    #[must_use]
    pub fn finds(&self, message: &ShownMessage) -> bool {
        if message.deleted {
            return false;
        }
        let mut haystack = message.message.text.to_lowercase();
        if let Some(file) = &message.message.file {
            haystack.push('\n');
            haystack.push_str(&file.name.to_lowercase());
        }
        self.words
            .iter()
            .all(|word| haystack.contains(word.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::ChatMessage;
    use crate::files::FileInfo;

    fn shown(text: &str) -> ShownMessage {
        ShownMessage {
            message: ChatMessage {
                id: Uuid::nil(),
                member: Uuid::nil(),
                device: Uuid::nil(),
                text: text.to_owned(),
                sent_at: 0,
                file: None,
                reply_to: None,
            },
            edited: false,
            deleted: false,
            reactions: Vec::new(),
        }
    }

    #[test]
    fn every_word_is_found_in_any_case_and_order() {
        let query = Query::new("  Board MINUTES ").expect("words");
        assert!(query.finds(&shown("The minutes of the board are in")));
        assert!(query.finds(&shown("BOARD: minutes")));
        assert!(!query.finds(&shown("The minutes are in")));
        assert!(
            Query::new("Ünïcödé")
                .expect("a word")
                .finds(&shown("ünïcödé 🗝"))
        );
        assert_eq!(Query::new(" \t "), None);
    }

    #[test]
    fn a_file_is_found_by_its_name_and_a_deleted_message_not_at_all() {
        let query = Query::new("minutes.pdf").expect("a word");
        let mut file = shown("");
        file.message.file = Some(FileInfo {
            name: "Minutes.pdf".into(),
            size: 1,
            mime: "application/pdf".into(),
        });
        assert!(query.finds(&file));
        let mut gone = shown("minutes.pdf");
        gone.deleted = true;
        assert!(!query.finds(&gone));
    }
}
