//! What was read from a file's text, by what was asked: parsing YAML losslessly costs far more
//! than looking a text up, and the same versions of a file are read again and again (the current
//! one by every alert on its service, the earlier ones by every rollback's history search).

use crate::{kind::EditError, place::Place};

/// Answers by what was asked and the text they were read from, bounded (see [`Reads::MAX`]).
pub(crate) struct Reads {
    answers: std::sync::Mutex<Answers>,
}

pub(crate) type Answer = Result<Option<String>, EditError>;

#[derive(Default)]
struct Answers {
    by_key: std::collections::HashMap<ReadKey, Answer>,
    /// The texts' bytes held in `by_key`.
    bytes: usize,
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct ReadKey {
    what: &'static str,
    place: Place,
    file: String,
    text: String,
}

impl ReadKey {
    pub(crate) fn new(what: &'static str, place: &Place, file: &str, text: &str) -> Self {
        Self {
            what,
            place: place.clone(),
            file: file.to_owned(),
            text: text.to_owned(),
        }
    }
}

impl Reads {
    /// Kept at most, in answers and in the bytes of the texts they were read from; past either,
    /// the cache starts again (a burst touches one or two versions per service).
    pub(crate) const MAX: usize = 2048;
    pub(crate) const MAX_BYTES: usize = 32 << 20;

    pub(crate) fn get_or(&self, key: ReadKey, read: impl FnOnce() -> Answer) -> Answer {
        #[cfg(test)]
        if UNCACHED.with(std::cell::Cell::get) {
            return read();
        }
        let lock = || self.answers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(answer) = lock().by_key.get(&key) {
            return answer.clone();
        }
        let answer = read();
        let size = key.text.len();
        if size > Self::MAX_BYTES / 8 {
            // A file this large is read as it is, not kept.
            return answer;
        }
        let mut answers = lock();
        if answers.by_key.len() >= Self::MAX || answers.bytes + size > Self::MAX_BYTES {
            answers.by_key.clear();
            answers.bytes = 0;
        }
        if answers.by_key.insert(key, answer.clone()).is_none() {
            answers.bytes += size;
        }
        answer
    }
}

#[cfg(test)]
thread_local! {
    /// Set by [`uncached`]: this thread's reads neither look up nor keep answers.
    static UNCACHED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `read` with every answer read from the text on this thread, none looked up or kept: what a
/// cached answer is compared against.
#[cfg(test)]
pub(crate) fn uncached<T>(read: impl FnOnce() -> T) -> T {
    UNCACHED.with(|flag| flag.set(true));
    let answer = read();
    UNCACHED.with(|flag| flag.set(false));
    answer
}

#[cfg(test)]
impl Reads {
    /// Whether an answer read from `text` is kept, and the bytes kept in all.
    pub(crate) fn holds(&self, text: &str) -> (bool, usize) {
        let answers = self.answers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (answers.by_key.keys().any(|k| k.text == text), answers.bytes)
    }
}

pub(crate) static READS: std::sync::LazyLock<Reads> = std::sync::LazyLock::new(|| Reads {
    answers: Default::default(),
});
