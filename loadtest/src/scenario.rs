//! What each request of a scenario is ([`Planner`]), how it is sent ([`execute`]) and how its
//! answer is judged ([`judge`]).

use std::sync::OnceLock;
use std::time::Duration;

use rand::RngExt;
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use tonic::Status;
use vault_proto::v1::{BatchCard, DetokenizeRequest, TokenizeBatchRequest, TokenizeRequest};

use crate::client::{self, Clients};
use crate::options::{DETOKENIZE_REASON, EXPIRY, Scenario};
use crate::pan::random_pan;
use crate::record::Record;
use crate::stats::{DEDUP_MISMATCH, Outcome, WRONG_BATCH, WRONG_PAN};

/// Tokens a task keeps to pick detokenizes from in the `mixed` scenario, when `--check` does
/// not keep them all anyway; beyond this a new token replaces a random kept one.
const MIXED_POOL_PER_TASK: usize = 10_000;

/// One PAN of the `tokenize-dedup` pool and the token its first answer carried.
pub(crate) struct DedupSlot {
    merchant: usize,
    pan: String,
    token: OnceLock<String>,
}

/// What every task of a run shares, read-only but for the dedup slots' first tokens.
pub(crate) struct Workload {
    pub(crate) scenario: Scenario,
    pub(crate) merchants: Vec<String>,
    pub(crate) token_format: i32,
    pub(crate) timeout: Duration,
    pub(crate) tokenize: Clients,
    pub(crate) detokenize: Option<Clients>,
    /// `tokenize-dedup`: the PANs re-tokenized.
    pub(crate) dedup: Vec<DedupSlot>,
    /// `detokenize`: the tokens made by the setup.
    pub(crate) tokens: Vec<Record>,
}

impl Workload {
    /// The `tokenize-dedup` pool: `size` random PANs, spread over the merchants.
    pub(crate) fn dedup_pool(size: usize, merchants: usize, rng: &mut SmallRng) -> Vec<DedupSlot> {
        (0..size)
            .map(|i| DedupSlot {
                merchant: i % merchants.max(1),
                pan: random_pan(rng),
                token: OnceLock::new(),
            })
            .collect()
    }

    fn merchant(&self, index: usize) -> &str {
        self.merchants.get(index).map_or("", String::as_str)
    }

    /// The Tokenize message for `pan` at merchant number `merchant`.
    pub(crate) fn tokenize_request(&self, merchant: usize, pan: &str) -> TokenizeRequest {
        TokenizeRequest {
            merchant_id: self.merchant(merchant).to_owned(),
            pan: pan.to_owned(),
            exp_month: Some(EXPIRY.0),
            exp_year: Some(EXPIRY.1),
            token_format: self.token_format,
        }
    }
}

/// One request to make.
pub(crate) enum Call {
    /// Tokenize `pan` for merchant number `merchant`; `slot` is its dedup pool slot.
    Tokenize {
        merchant: usize,
        pan: String,
        slot: Option<usize>,
    },
    /// Detokenize `expected.token` for `expected.merchant`; the PAN must be `expected.pan`.
    Detokenize { expected: Record },
    /// TokenizeBatch `pans` for merchant number `merchant`.
    Batch { merchant: usize, pans: Vec<String> },
    /// A gRPC health check of the whole server; the answer must be SERVING.
    Health,
}

/// Chooses the requests of one task. Each task has its own, so nothing is locked.
pub(crate) struct Planner {
    rng: SmallRng,
    /// Requests planned so far, offset by the task number: the connection round-robin.
    sent: usize,
    /// Tokens acknowledged to this task that it keeps: all of them for `--check`, else (in
    /// `mixed`) a bounded sample to detokenize.
    acks: Vec<Record>,
    keep_all: bool,
}

impl Planner {
    /// The planner of task number `task`; `keep_all` keeps every acknowledged token (for
    /// `--check`).
    pub(crate) fn new(task: usize, keep_all: bool) -> Self {
        Self {
            rng: rand::make_rng(),
            sent: task,
            acks: Vec::new(),
            keep_all,
        }
    }

    /// The connection number for the next request.
    pub(crate) fn next_connection(&mut self) -> usize {
        let n = self.sent;
        self.sent = self.sent.wrapping_add(1);
        n
    }

    /// The next request.
    pub(crate) fn plan(&mut self, work: &Workload) -> Call {
        match work.scenario {
            Scenario::TokenizeDedup { .. } => {
                let chosen = (!work.dedup.is_empty())
                    .then(|| self.rng.random_range(0..work.dedup.len()))
                    .and_then(|i| work.dedup.get(i).map(|slot| (i, slot)));
                if let Some((i, slot)) = chosen {
                    return Call::Tokenize {
                        merchant: slot.merchant,
                        pan: slot.pan.clone(),
                        slot: Some(i),
                    };
                }
            }
            Scenario::Detokenize { .. } => {
                if let Some(expected) = work.tokens.choose(&mut self.rng) {
                    return Call::Detokenize {
                        expected: expected.clone(),
                    };
                }
            }
            Scenario::Mixed { detokenize_percent } => {
                if self
                    .rng
                    .random_ratio(u32::from(detokenize_percent.min(100)), 100)
                    && let Some(expected) = self.acks.choose(&mut self.rng)
                {
                    return Call::Detokenize {
                        expected: expected.clone(),
                    };
                }
            }
            Scenario::Health => return Call::Health,
            Scenario::Batch { size } => {
                return Call::Batch {
                    merchant: self.rng.random_range(0..work.merchants.len().max(1)),
                    pans: (0..size).map(|_| random_pan(&mut self.rng)).collect(),
                };
            }
            Scenario::Tokenize => {}
        }
        // A fresh PAN: the `tokenize` scenario, `mixed` when not detokenizing (or with nothing
        // acknowledged yet), and never-empty pools' fallback.
        Call::Tokenize {
            merchant: self.rng.random_range(0..work.merchants.len().max(1)),
            pan: random_pan(&mut self.rng),
            slot: None,
        }
    }

    /// Keeps an acknowledged token: every one with `keep_all`, a bounded sample in `mixed`.
    pub(crate) fn keep(&mut self, work: &Workload, ack: Record) {
        if self.keep_all {
            self.acks.push(ack);
        } else if matches!(work.scenario, Scenario::Mixed { .. }) {
            if self.acks.len() < MIXED_POOL_PER_TASK {
                self.acks.push(ack);
            } else {
                let i = self.rng.random_range(0..self.acks.len());
                if let Some(kept) = self.acks.get_mut(i) {
                    *kept = ack;
                }
            }
        }
    }

    /// The tokens this task kept.
    pub(crate) fn into_acks(self) -> Vec<Record> {
        self.acks
    }
}

/// The vault's answer to a call: a token (Tokenize), a PAN (Detokenize) or the serving status
/// (health), or the tokens of a batch.
pub(crate) type Answer = Result<Reply, Status>;

/// What an answered call returned.
pub(crate) enum Reply {
    /// A token, a PAN or a serving status.
    One(String),
    /// A batch's tokens, in the order of its cards.
    Many(Vec<String>),
}

/// Sends `call` on connection number `connection`.
pub(crate) async fn execute(work: &Workload, call: &Call, connection: usize) -> Answer {
    match call {
        Call::Tokenize { merchant, pan, .. } => {
            let message = work.tokenize_request(*merchant, pan);
            client::tokenize(work.tokenize.pick(connection), message, work.timeout)
                .await
                .map(Reply::One)
        }
        Call::Batch { merchant, pans } => {
            let message = TokenizeBatchRequest {
                merchant_id: work.merchant(*merchant).to_owned(),
                cards: pans
                    .iter()
                    .map(|pan| BatchCard {
                        pan: pan.clone(),
                        exp_month: Some(EXPIRY.0),
                        exp_year: Some(EXPIRY.1),
                    })
                    .collect(),
                token_format: work.token_format,
            };
            client::tokenize_batch(work.tokenize.pick(connection), message, work.timeout)
                .await
                .map(Reply::Many)
        }
        Call::Detokenize { expected } => {
            let Some(clients) = &work.detokenize else {
                return Err(Status::failed_precondition(
                    "loadtest: no detokenize identity for this scenario",
                ));
            };
            let message = DetokenizeRequest {
                merchant_id: expected.merchant.clone(),
                token: expected.token.clone(),
                reason: DETOKENIZE_REASON.to_owned(),
            };
            client::detokenize(clients.pick(connection), message, work.timeout)
                .await
                .map(Reply::One)
        }
        Call::Health => client::health(work.tokenize.pick(connection), work.timeout)
            .await
            .map(Reply::One),
    }
}

/// How a call ended.
pub(crate) struct Judged {
    /// Right, failed or wrong.
    pub(crate) outcome: Outcome,
    /// The tokens the vault acknowledged: one for a Tokenize answered OK, every card's for a
    /// batch.
    pub(crate) acks: Vec<Record>,
    /// Whether the acks are new to the run (not a dedup repeat), so a check needs them.
    pub(crate) new_ack: bool,
}

/// Judges the answer to `call`.
pub(crate) fn judge(work: &Workload, call: Call, answer: Answer) -> Judged {
    let token_or_pan = match answer {
        Ok(Reply::One(value)) => value,
        Ok(Reply::Many(tokens)) => return judge_batch(work, call, tokens),
        Err(status) => {
            return Judged {
                outcome: Outcome::Rpc(status),
                acks: Vec::new(),
                new_ack: false,
            };
        }
    };
    match call {
        Call::Batch { .. } => wrong_reply("a batch was answered with one value"),
        Call::Tokenize {
            merchant,
            pan,
            slot,
        } => {
            let ack = Record {
                merchant: work.merchant(merchant).to_owned(),
                token: token_or_pan,
                pan,
            };
            let (outcome, new_ack) = match slot.and_then(|i| work.dedup.get(i)) {
                None => (Outcome::Ok, true),
                Some(slot) => match slot.token.set(ack.token.clone()) {
                    Ok(()) => (Outcome::Ok, true),
                    Err(_) => match slot.token.get() {
                        Some(first) if *first == ack.token => (Outcome::Ok, false),
                        first => (
                            Outcome::Wrong {
                                kind: DEDUP_MISMATCH,
                                message: format!(
                                    "merchant {} got token {} for a card first tokenized as {}",
                                    ack.merchant,
                                    ack.token,
                                    first.map_or("?", String::as_str)
                                ),
                            },
                            true,
                        ),
                    },
                },
            };
            Judged {
                outcome,
                acks: vec![ack],
                new_ack,
            }
        }
        Call::Health => Judged {
            outcome: if token_or_pan == client::SERVING {
                Outcome::Ok
            } else {
                Outcome::Rpc(Status::unavailable(format!(
                    "loadtest: the health check answered {token_or_pan}"
                )))
            },
            acks: Vec::new(),
            new_ack: false,
        },
        Call::Detokenize { expected } => {
            let outcome = if token_or_pan == expected.pan {
                Outcome::Ok
            } else {
                Outcome::Wrong {
                    kind: WRONG_PAN,
                    message: format!(
                        "merchant {} token {} returned another card's PAN",
                        expected.merchant, expected.token
                    ),
                }
            };
            Judged {
                outcome,
                acks: Vec::new(),
                new_ack: false,
            }
        }
    }
}

/// Judges a batch's tokens: one per card, none empty.
fn judge_batch(work: &Workload, call: Call, tokens: Vec<String>) -> Judged {
    let Call::Batch { merchant, pans } = call else {
        return wrong_reply("a single call was answered with a batch");
    };
    if tokens.len() != pans.len() || tokens.iter().any(String::is_empty) {
        return Judged {
            outcome: Outcome::Wrong {
                kind: WRONG_BATCH,
                message: format!(
                    "merchant {} got {} tokens for a batch of {} cards",
                    work.merchant(merchant),
                    tokens.iter().filter(|t| !t.is_empty()).count(),
                    pans.len()
                ),
            },
            acks: Vec::new(),
            new_ack: false,
        };
    }
    let acks = pans
        .into_iter()
        .zip(tokens)
        .map(|(pan, token)| Record {
            merchant: work.merchant(merchant).to_owned(),
            token,
            pan,
        })
        .collect();
    Judged {
        outcome: Outcome::Ok,
        acks,
        new_ack: true,
    }
}

/// A reply of the wrong shape for its call (a bug in this tool, never the vault's answer).
fn wrong_reply(message: &str) -> Judged {
    Judged {
        outcome: Outcome::Rpc(Status::internal(format!("loadtest: {message}"))),
        acks: Vec::new(),
        new_ack: false,
    }
}
