//! Abuse tallies, batched: every tally request of a group commit is counted with a handful of
//! multi-row statements (read the counts and the items already seen, add to the counts, store
//! the other new items), not three statements per item. A tally's first item lives in its row,
//! so a bucket's only card (the common case) costs one row. The counting itself is here,
//! backend-free; `sql/tallies.rs` (and SQLite's `sqlite/writer.rs`) run the statements.
//!
//! Exactness across replicas comes from the upsert: each tally's count is raised by its number
//! of new items in one atomic upsert that returns the result, so the new items of racing
//! transactions (on any replica) get distinct places in the count. The read before it decides
//! which items are new and whether a tally is already past its limit; it reads a count and the
//! items together, so a count is never older than the items seen with it ([`Read::row`]). A
//! stale read can then only make the vault count an item twice (two racing requests bringing
//! the same new card), never answer more items within the limit than the limit.

use std::collections::{HashMap, HashSet};

use vault_core::ports::{Tallied, TallyRequest};

/// A tally's key: window end, scope, subject (the tables' key order).
pub(crate) type Key = (i64, &'static str, String);

/// The key of `request`.
pub(crate) fn key(request: &TallyRequest) -> Key {
    (request.window_end, request.scope, request.subject.clone())
}

/// The (tally, item) pairs a batch reads, each once; a tally with no items is asked with an
/// empty item, for its count alone. `keys` holds each request's key, in order.
pub(crate) fn pairs<'a>(
    requests: &[&'a TallyRequest],
    keys: &'a [Key],
) -> Vec<(&'a Key, &'a [u8])> {
    let mut asked = HashSet::new();
    let mut pairs = Vec::new();
    for (request, key) in requests.iter().zip(keys) {
        let items: Vec<&[u8]> = if request.items.is_empty() {
            vec![&[][..]]
        } else {
            request.items.iter().map(Vec::as_slice).collect()
        };
        for item in items {
            if asked.insert((key, item)) {
                pairs.push((key, item));
            }
        }
    }
    pairs
}

/// What a batch's reads found: each tally's count, and the items it holds already.
#[derive(Debug, Default)]
pub(crate) struct Read {
    pub(crate) counts: HashMap<Key, u64>,
    pub(crate) seen: HashSet<(Key, Vec<u8>)>,
}

impl Read {
    /// One row read: a tally's `count` and `first` item, and whether it holds `item`. One
    /// statement reads a count and the items it saw from one snapshot, so the count is at least
    /// the place of each of those items; statements are separate snapshots, so the highest
    /// count read is kept, which is at least the place of every item any of them saw. (A count
    /// read before another transaction committed an item, beside that item read after it,
    /// would answer an item counted past the limit as within it.)
    pub(crate) fn row(&mut self, key: Key, count: u64, first: Vec<u8>, item: Vec<u8>, held: bool) {
        let known = self.counts.entry(key.clone()).or_insert(0);
        *known = (*known).max(count);
        if held {
            self.seen.insert((key.clone(), item));
        }
        self.seen.insert((key, first));
    }
}

/// What became of one item when the batch was planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// New to its tally: the `n`-th new one of the batch (from 0).
    New(u64),
    /// Already in its tally, or its tally was past the limit: not counted. The tally's count
    /// at that point of the batch, as read.
    Counted(u64),
}

/// A planned batch: what to write, and how to answer once the counts are known.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// New items to store in the items table (all but a new tally's first).
    pub(crate) new_items: Vec<(Key, Vec<u8>)>,
    /// How many new items each tally gains, sorted by key, with the first item for a tally
    /// the read found no row for (empty otherwise; kept only if the upsert creates the row).
    pub(crate) added: Vec<(Key, u64, Vec<u8>)>,
    /// Tallies to push past their limit (the floor to raise them to).
    pub(crate) trips: Vec<(Key, u64)>,
    marks: Vec<Vec<Mark>>,
    read: HashMap<Key, u64>,
}

/// Plans `requests` in order, as if each item were added alone, from what the store holds
/// now (`read`: a tally it has no count for has no row).
pub(crate) fn plan(requests: &[&TallyRequest], read: Read) -> Plan {
    let Read { counts: read, seen } = read;
    let mut running = read.clone();
    let mut added: HashMap<Key, u64> = HashMap::new();
    let mut first: HashMap<Key, Vec<u8>> = HashMap::new();
    let mut fresh: HashSet<(Key, Vec<u8>)> = HashSet::new();
    let mut plan = Plan::default();
    for request in requests {
        let key = key(request);
        let mut marks = Vec::with_capacity(request.items.len());
        for item in &request.items {
            let count = running.get(&key).copied().unwrap_or(0);
            let entry = (key.clone(), item.clone());
            if count > request.limit || seen.contains(&entry) || fresh.contains(&entry) {
                marks.push(Mark::Counted(count));
                continue;
            }
            let n = added.entry(key.clone()).or_insert(0);
            marks.push(Mark::New(*n));
            *n += 1;
            running.insert(key.clone(), count + 1);
            fresh.insert(entry.clone());
            if !read.contains_key(&key) && !first.contains_key(&key) {
                first.insert(key.clone(), item.clone());
            } else {
                plan.new_items.push(entry);
            }
        }
        if request.trip {
            let floor = request.limit.saturating_add(1);
            plan.trips.push((key.clone(), floor));
            let count = running.entry(key).or_insert(0);
            *count = (*count).max(floor);
        }
        plan.marks.push(marks);
    }
    plan.added = added
        .into_iter()
        .map(|(key, n)| {
            let first = first.remove(&key).unwrap_or_default();
            (key, n, first)
        })
        .collect();
    plan.added.sort();
    plan.read = read;
    plan
}

impl Plan {
    /// The answers, given each gaining tally's count after the batch's atomic increment.
    /// Racing transactions that counted in between shift this batch's places by as much.
    pub(crate) fn results(
        &self,
        requests: &[&TallyRequest],
        after: &HashMap<Key, u64>,
    ) -> Vec<Vec<Tallied>> {
        let gained: HashMap<&Key, u64> = self.added.iter().map(|(k, n, _)| (k, *n)).collect();
        requests
            .iter()
            .zip(&self.marks)
            .map(|(request, marks)| {
                let key = key(request);
                let read = self.read.get(&key).copied().unwrap_or(0);
                // The count just before this batch's increment, as the store ordered it.
                let base = match (after.get(&key), gained.get(&key)) {
                    (Some(after), Some(n)) => after.saturating_sub(*n),
                    _ => read,
                };
                let shift = base.saturating_sub(read);
                marks
                    .iter()
                    .map(|mark| match *mark {
                        Mark::New(n) => Tallied {
                            count: base + n + 1,
                            new: true,
                        },
                        Mark::Counted(count) => Tallied {
                            count: count + shift,
                            new: false,
                        },
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn request(subject: &str, items: &[u8], limit: u64, trip: bool) -> TallyRequest {
        TallyRequest {
            scope: "s",
            subject: subject.to_owned(),
            window_end: 1,
            items: items.iter().map(|i| vec![*i]).collect(),
            limit,
            trip,
        }
    }

    fn answers(tallies: &[Tallied]) -> Vec<(u64, bool)> {
        tallies.iter().map(|t| (t.count, t.new)).collect()
    }

    #[test]
    fn a_batch_counts_like_its_requests_one_after_another() {
        let a = request("a", &[1, 2, 1], 2, false);
        let b = request("a", &[3, 4], 2, false);
        let c = request("b", &[1], 2, false);
        let requests = [&a, &b, &c];
        let plan = plan(&requests, Read::default());
        // Each new tally's first item goes in its row; the other two into the items table.
        assert_eq!(plan.new_items.len(), 2);
        assert_eq!(plan.added[0], (key(&a), 3, vec![1]));
        assert_eq!(plan.added[1], (key(&c), 1, vec![1]));
        let after: HashMap<Key, u64> = [(key(&a), 3), (key(&c), 1)].into_iter().collect();
        let got = plan.results(&requests, &after);
        assert_eq!(answers(&got[0]), [(1, true), (2, true), (2, false)]);
        // The third distinct item passes the limit; past it nothing more is added.
        assert_eq!(answers(&got[1]), [(3, true), (3, false)]);
        assert_eq!(answers(&got[2]), [(1, true)]);
    }

    #[test]
    fn racing_transactions_shift_the_places() {
        let a = request("a", &[1, 2], 10, false);
        let requests = [&a];
        let mut read = Read::default();
        read.row(key(&a), 4, vec![1], vec![2], false);
        let plan = plan(&requests, read);
        // The tally has a row: its new item goes to the items table.
        assert_eq!(plan.new_items, [(key(&a), vec![2])]);
        assert_eq!(plan.added, [(key(&a), 1, vec![])]);
        // Another replica added 3 between the read and the increment.
        let after: HashMap<Key, u64> = [(key(&a), 8)].into_iter().collect();
        let got = plan.results(&requests, &after);
        assert_eq!(answers(&got[0]), [(7, false), (8, true)]);
    }

    #[test]
    fn a_trip_spends_the_tally_for_the_rest_of_the_batch() {
        let a = request("a", &[1], 5, true);
        let b = request("a", &[2], 5, false);
        let requests = [&a, &b];
        let plan = plan(&requests, Read::default());
        assert_eq!(plan.trips, [(key(&a), 6)]);
        let after: HashMap<Key, u64> = [(key(&a), 1)].into_iter().collect();
        let got = plan.results(&requests, &after);
        assert_eq!(answers(&got[0]), [(1, true)]);
        assert_eq!(answers(&got[1]), [(6, false)]);
    }

    #[test]
    fn an_item_seen_is_never_answered_below_the_count_that_holds_it() {
        // Limit 12. Another transaction brought card 9 as the 13th and committed between two
        // statements of this batch's read: the first read the count as 12 (9 not held yet),
        // the second saw 9 held with the count 13. The card must read as past the limit.
        let a = request("a", &[7, 9], 12, false);
        let requests = [&a];
        let mut read = Read::default();
        read.row(key(&a), 12, vec![1], vec![7], true);
        read.row(key(&a), 13, vec![1], vec![9], true);
        let plan = plan(&requests, read);
        assert!(plan.added.is_empty());
        let got = plan.results(&requests, &HashMap::new());
        assert_eq!(answers(&got[0]), [(13, false), (13, false)]);
        assert!(got[0].iter().all(|t| t.count > 12));
    }

    #[test]
    fn every_pair_is_read_once_and_an_empty_request_for_its_count() {
        let a = request("a", &[1, 2, 1], 5, false);
        let b = request("a", &[2, 3], 5, false);
        let c = request("b", &[], 5, true);
        let requests = [&a, &b, &c];
        let keys: Vec<Key> = requests.iter().map(|r| key(r)).collect();
        let got: Vec<(&str, Vec<u8>)> = pairs(&requests, &keys)
            .into_iter()
            .map(|(k, item)| (k.2.as_str(), item.to_vec()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", vec![1]),
                ("a", vec![2]),
                ("a", vec![3]),
                ("b", vec![])
            ]
        );
    }
}
