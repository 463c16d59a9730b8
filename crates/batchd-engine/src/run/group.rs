//! Prefix grouping: the order in which read-ahead records are dispatched, so that records whose
//! prompts begin alike reach an OpenAI-compatible server one after another and its prompt
//! cache (llama-server's slots, vLLM's and SGLang's prefix caches) computes the shared prefix
//! once. Only the dispatch order changes: the pipeline gives each record its sequence number
//! (its place in the output) when it reads it, in input order, and reads no further than its
//! reorder window, so the records held here never exceed that window.
//!
//! The rule: take the oldest record not yet dispatched, then the other read-ahead records with
//! its key (in input order), then the oldest again. When no two records share a key, that is
//! input order. The oldest record waits at most until its window fills: reading stops there,
//! and the group being dispatched runs out of records.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::LazyLock;

use memchr::memmem::Finder;

/// The bytes of a prompt's beginning that make its key: about 60 tokens, enough that two
/// records with the same key share a prefix worth a cache hit.
pub(crate) const KEY_BYTES: usize = 256;

/// Where a prompt begins in a record line, tried in this order: Converse, Anthropic and Nova
/// bodies put their `system` first in the prompt (else `messages`), Llama and Mistral bodies
/// have a `prompt`, Titan text bodies an `inputText`.
static PROMPT_STARTS: LazyLock<[Finder<'static>; 4]> = LazyLock::new(|| {
    [
        Finder::new(b"\"system\""),
        Finder::new(b"\"messages\""),
        Finder::new(b"\"prompt\""),
        Finder::new(b"\"inputText\""),
    ]
});
static RECORD_ID: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"recordId\""));

/// The prefix key of a record line: a hash of up to [`KEY_BYTES`] bytes of the raw line from
/// where its prompt begins (see [`PROMPT_STARTS`]), cut before a `"recordId"` that follows
/// a short prompt. It reads the raw bytes and parses nothing: a record costs a few substring
/// searches, not a second parse (the task parses it as before). It is only a scheduling hint:
/// a wrong key costs a cache hit, never a byte of output. `None`: no prompt found.
pub(crate) fn prefix_key(line: &[u8]) -> Option<u64> {
    let start = PROMPT_STARTS.iter().find_map(|f| f.find(line))?;
    let mut key = &line[start..line.len().min(start + KEY_BYTES)];
    if let Some(id) = RECORD_ID.find(key) {
        key = &key[..id];
    }
    Some(hash(key))
}

/// A fast multiply-rotate hash over 8-byte words (FxHash's): keys are compared by hash only,
/// and a collision merely groups two prefixes.
fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    for &b in words.remainder() {
        h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
    }
    h
}

/// A hasher for keys that are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash(bytes);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A read-ahead record and the next record of its key.
struct Slot<T> {
    item: Option<T>,
    key: Option<u64>,
    /// The sequence number of the next record (in input order) with the same key.
    next: Option<u64>,
}

/// Records read ahead and not yet dispatched, by sequence number.
pub(crate) struct Grouper<T> {
    /// From the oldest record not yet taken (`base`) to the newest pushed; taken ones are
    /// `None` until the oldest is taken.
    slots: VecDeque<Slot<T>>,
    base: u64,
    /// Each key's oldest and newest records not yet taken.
    keys: HashMap<u64, (u64, u64), BuildHasherDefault<Prehashed>>,
    /// The key of the group being dispatched.
    current: Option<u64>,
    len: usize,
}

impl<T> Grouper<T> {
    pub(crate) fn new() -> Self {
        Self {
            slots: VecDeque::new(),
            base: 0,
            keys: HashMap::default(),
            current: None,
            len: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sequence number of the oldest record held.
    pub(crate) fn oldest(&self) -> Option<u64> {
        (!self.slots.is_empty()).then_some(self.base)
    }

    /// Sequence numbers spanned from the oldest record held to the newest: the memory held.
    #[cfg(test)]
    fn span(&self) -> usize {
        self.slots.len()
    }

    /// Adds the record read with sequence number `seq`, one more than the last pushed (any
    /// number when nothing is held). A record without a key is grouped with nothing.
    pub(crate) fn push(&mut self, seq: u64, key: Option<u64>, item: T) {
        if self.slots.is_empty() {
            self.base = seq;
        }
        debug_assert_eq!(seq, self.base + self.slots.len() as u64);
        if let Some(k) = key {
            match self.keys.get_mut(&k) {
                Some((_, last)) => {
                    let at = (*last - self.base) as usize;
                    self.slots[at].next = Some(seq);
                    *last = seq;
                }
                None => {
                    self.keys.insert(k, (seq, seq));
                }
            }
        }
        self.slots.push_back(Slot {
            item: Some(item),
            key,
            next: None,
        });
        self.len += 1;
    }

    /// The record to dispatch next, with its sequence number: the oldest record of the current
    /// group's key, else the oldest record held (whose key becomes the current one).
    pub(crate) fn take(&mut self) -> Option<(u64, T)> {
        let grouped = self
            .current
            .and_then(|k| self.keys.get(&k))
            .map(|&(first, _)| first);
        match grouped {
            Some(seq) => self.take_at(seq),
            None => self.take_oldest(),
        }
    }

    /// The oldest record held (a stop's "not run" answers go in input order).
    pub(crate) fn take_oldest(&mut self) -> Option<(u64, T)> {
        self.current = self.slots.front()?.key;
        self.take_at(self.base)
    }

    fn take_at(&mut self, seq: u64) -> Option<(u64, T)> {
        let slot = self.slots.get_mut(usize::try_from(seq - self.base).ok()?)?;
        let item = slot.item.take()?;
        if let Some(k) = slot.key {
            // `seq` is its key's oldest: the key's list starts at the next one, or ends.
            match slot.next {
                Some(next) => {
                    if let Some(entry) = self.keys.get_mut(&k) {
                        entry.0 = next;
                    }
                }
                None => {
                    self.keys.remove(&k);
                }
            }
        }
        self.len -= 1;
        while self.slots.front().is_some_and(|s| s.item.is_none()) {
            self.slots.pop_front();
            self.base += 1;
        }
        Some((seq, item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes records with these keys (seq = index) and takes them all.
    fn order(keys: &[Option<u64>]) -> Vec<u64> {
        let mut g = Grouper::new();
        for (seq, key) in keys.iter().enumerate() {
            g.push(seq as u64, *key, ());
        }
        let taken: Vec<u64> = std::iter::from_fn(|| g.take().map(|(seq, ())| seq)).collect();
        assert!(g.is_empty() && g.span() == 0 && g.keys.is_empty());
        taken
    }

    #[test]
    fn without_shared_keys_the_order_is_input_order() {
        let distinct: Vec<_> = (0..50).map(|i| Some(i * 7 + 1)).collect();
        assert_eq!(order(&distinct), (0..50).collect::<Vec<_>>());
        assert_eq!(order(&[None; 10]), (0..10).collect::<Vec<_>>());
        let mixed = [Some(1), None, Some(2), None, Some(3)];
        assert_eq!(order(&mixed), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn records_sharing_a_key_go_together_oldest_group_first() {
        let (a, b, c) = (Some(10), Some(20), Some(30));
        // Interleaved: a b c a b c a b → all a's, then b's, then c's, each in input order.
        let keys = [a, b, c, a, b, c, a, b];
        assert_eq!(order(&keys), vec![0, 3, 6, 1, 4, 7, 2, 5]);
        // A keyless record goes alone, at its place among the groups' starts.
        let keys = [a, None, b, a, b];
        assert_eq!(order(&keys), vec![0, 3, 1, 2, 4]);
    }

    #[test]
    fn records_pushed_while_a_group_runs_join_it() {
        let mut g = Grouper::new();
        g.push(0, Some(1), ());
        g.push(1, Some(2), ());
        assert_eq!(g.take().map(|t| t.0), Some(0));
        g.push(2, Some(1), ());
        assert_eq!(g.take().map(|t| t.0), Some(2));
        assert_eq!(g.take().map(|t| t.0), Some(1));
        assert_eq!(g.take(), None);
        // Held nothing: the next push may start anywhere.
        g.push(40, Some(2), ());
        assert_eq!(g.take().map(|t| t.0), Some(40));
    }

    #[test]
    fn take_oldest_is_input_order_whatever_the_group() {
        let mut g = Grouper::new();
        for (seq, key) in [1, 2, 1, 2].into_iter().enumerate() {
            g.push(seq as u64, Some(key), ());
        }
        assert_eq!(g.take().map(|t| t.0), Some(0));
        assert_eq!(g.take().map(|t| t.0), Some(2));
        g.push(4, Some(1), ());
        let rest: Vec<u64> = std::iter::from_fn(|| g.take_oldest().map(|t| t.0)).collect();
        assert_eq!(rest, vec![1, 3, 4]);
    }

    /// The pipeline's loop in small: reads while `next - written < window`, dispatches one
    /// record at a time (concurrency 1, each finishing at once), writes in sequence order.
    /// Returns the dispatch order and the most the grouper ever spanned.
    fn pipeline(keys: &[u64], window: u64) -> (Vec<u64>, usize) {
        let mut g = Grouper::new();
        let (mut next, mut written) = (0u64, 0u64);
        let mut finished = std::collections::BTreeSet::new();
        let (mut dispatched, mut most) = (Vec::new(), 0);
        loop {
            while (next as usize) < keys.len() && next - written < window {
                g.push(next, Some(keys[next as usize]), ());
                next += 1;
            }
            most = most.max(g.span());
            let Some((seq, ())) = g.take() else { break };
            dispatched.push(seq);
            finished.insert(seq);
            while finished.remove(&written) {
                written += 1;
            }
        }
        (dispatched, most)
    }

    #[test]
    fn the_window_bounds_memory_and_how_long_the_oldest_waits() {
        // Two keys, the rarer one starved as long as the common one keeps arriving.
        let keys: Vec<u64> = (0..2000)
            .map(|i| if i % 100 == 0 { 1 } else { 2 })
            .collect();
        for window in [1, 2, 16, 256] {
            let (order, most) = pipeline(&keys, window);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..2000).collect::<Vec<_>>(), "each record once");
            assert!(most <= window as usize, "window {window}: held {most}");
            // No record is dispatched before one read `window` or more before it.
            for (i, &seq) in order.iter().enumerate() {
                let waited = order[i..].iter().filter(|&&s| s + window <= seq).count();
                assert_eq!(
                    waited, 0,
                    "window {window}: record {seq} overtook an old one"
                );
            }
        }
        // A window of 1 is input order.
        assert_eq!(pipeline(&keys, 1).0, (0..2000).collect::<Vec<_>>());
    }

    #[test]
    fn keys_come_from_the_prompt_start() {
        let line = |system: &str, question: &str, id: &str| {
            format!(
                r#"{{"recordId":"{id}","modelInput":{{"system":[{{"text":"{system}"}}],"messages":[{{"role":"user","content":[{{"text":"{question}"}}]}}]}}}}"#
            )
        };
        let long = "You are a support agent. ".repeat(20);
        let k = |s: &str, q: &str, id: &str| prefix_key(line(s, q, id).as_bytes());
        // A long system prompt: the key is its start, whatever the question or id.
        assert_eq!(k(&long, "a?", "r1"), k(&long, "b?", "r2"));
        assert_ne!(k(&long, "a?", "r1"), k(&format!("X{long}"), "a?", "r1"));
        // A short one: the question's start is part of the key.
        assert_ne!(k("Be brief.", "a?", "r1"), k("Be brief.", "b?", "r1"));
        // Keys sorted after modelInput: a short prompt is cut before the record id.
        let sorted = |q: &str, id: &str| {
            format!(
                r#"{{"modelInput":{{"messages":[{{"content":[{{"text":"{q}"}}],"role":"user"}}]}},"recordId":"{id}"}}"#
            )
        };
        assert_eq!(
            prefix_key(sorted("hello", "r1").as_bytes()),
            prefix_key(sorted("hello", "r2").as_bytes())
        );
        // Native bodies: a prompt, an inputText; a line with neither has no key.
        let llama = |q: &str| format!(r#"{{"modelInput":{{"prompt":"{long}{q}"}}}}"#);
        assert_eq!(
            prefix_key(llama("a").as_bytes()),
            prefix_key(llama("b").as_bytes())
        );
        assert!(prefix_key(br#"{"modelInput":{"inputText":"hi"}}"#).is_some());
        assert_eq!(prefix_key(br#"{"modelInput":{"texts":["hi"]}}"#), None);
        // A quoted "system" inside a text is escaped: not a prompt start.
        let escaped =
            r#"{"modelInput":{"messages":[{"content":[{"text":"say \"system\" twice"}]}]}}"#;
        let at = escaped.find("\"messages\"").unwrap();
        assert_eq!(
            prefix_key(escaped.as_bytes()),
            Some(hash(&escaped.as_bytes()[at..]))
        );
    }
}
