//! The Forward use case: the card behind a token, rendered into an approved template and sent
//! to an approved destination; the processor's answer comes back with the card masked.
//!
//! Order of checks: the caller's quota, the policy for the merchant (`forward`), the reason,
//! the destination (approved and not revoked), the template, method, path and headers (what
//! the approval allows), the variables (escaped; no card numbers), the distinct-tokens limit,
//! and only then the card is read. Every refusal up to here is one audit record (`forward`,
//! failed), as for any call.
//!
//! Then **two records**. The first (`forward`, success: destination, fingerprint, template,
//! method, path) is made durable with an in-flight mark *before* the request leaves: no
//! record, no forward. The second (`forward.result`: status and bytes, or why no answer came)
//! clears the mark. If the second cannot be written, the caller still gets the (masked)
//! answer, or the processor's failure: the processor may have acted, and withholding its
//! answer would invite a blind retry and a second charge. The loss is logged, the mark stays,
//! and [`Forwards::record_unknown_outcomes`] (at start and periodically) records such a
//! forward's outcome as `unknown` once its deadline has passed; exactly one replica records
//! it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::{AuditRecord, Event, Outcome};
use crate::audited::Audited;
use crate::clock::now;
use crate::error::{Throttle, VaultError};
use crate::forward::admin::approval_message;
use crate::forward::mask::mask_card;
use crate::forward::path::check_path;
use crate::forward::ports::{Egress, EgressFailure, OutboundRequest};
use crate::forward::spec::{Destination, Method, is_name};
use crate::forward::template::CardValues;
use crate::guard::{self, GuardSettings};
use crate::ids::CallContext;
use crate::invalid::InvalidArgument;
use crate::pan::contains_card_number;
use crate::policy::Operation;
use crate::ports::{ForwardInFlight, TokenStore};
use crate::reason::Reason;
use crate::spans;
use crate::tokens::{TokenCommand, Tokens};
use crate::trail::AuditTrail;

/// The tally scope of the distinct-tokens limit.
pub const FORWARDED_TOKENS_SCOPE: &str = "forward.tokens";
/// How long after a forward's deadline its in-flight mark is taken for a lost outcome: the
/// time its replica may still need to write the second record.
pub const OUTCOME_GRACE: Duration = Duration::from_secs(10);
/// The most request headers a caller may send.
pub const MAX_HEADERS: usize = 16;

/// A Forward request as the caller sent it, unparsed.
#[derive(Clone, Default)]
pub struct ForwardCommand {
    /// The merchant id.
    pub merchant_id: String,
    /// The token whose card is sent.
    pub token: String,
    /// Why (audited), as for Detokenize.
    pub reason: String,
    /// The destination's name.
    pub destination: String,
    /// The template's name.
    pub template: String,
    /// The HTTP method.
    pub method: String,
    /// The path below the destination's base URL.
    pub path: String,
    /// The template's variables.
    pub variables: BTreeMap<String, String>,
    /// Request headers, names as sent.
    pub headers: Vec<(String, String)>,
}

impl fmt::Debug for ForwardCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardCommand")
            .field("destination", &self.destination.len())
            .field("variables", &self.variables.len())
            .field("headers", &self.headers.len())
            .finish_non_exhaustive()
    }
}

/// The processor's answer, with the card masked in its headers and body.
pub struct Forwarded {
    /// The processor's HTTP status.
    pub status: u16,
    /// The headers the destination allows, masked.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, masked.
    pub body: Vec<u8>,
}

impl fmt::Debug for Forwarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarded")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Everything checked; the request ready to leave once its first record is durable.
struct Prepared {
    request: OutboundRequest,
    pan: crate::pan::Pan,
    in_flight: ForwardInFlight,
}

/// The Forward use case.
#[derive(Clone)]
pub(crate) struct Forwards {
    calls: Audited,
    tokens: Tokens,
    store: Arc<dyn TokenStore>,
    egress: Arc<dyn Egress>,
    guard: GuardSettings,
    trail: AuditTrail,
}

impl Forwards {
    pub(crate) fn new(
        calls: Audited,
        tokens: Tokens,
        store: Arc<dyn TokenStore>,
        egress: Arc<dyn Egress>,
        guard: GuardSettings,
        trail: AuditTrail,
    ) -> Self {
        Self {
            calls,
            tokens,
            store,
            egress,
            guard,
            trail,
        }
    }

    /// Sends the card behind a token to an approved destination (see the module doc).
    ///
    /// # Errors
    /// Any [`VaultError`]: a refusal before the request leaves (audited once), or
    /// [`VaultError::Egress`] for a processor that gave no usable answer (audited twice).
    pub(crate) async fn forward(
        &self,
        ctx: &CallContext,
        command: ForwardCommand,
    ) -> Result<Forwarded, VaultError> {
        let mut audit = AuditRecord::begin(ctx, Operation::Forward);
        let prepared = match self.prepare(&mut audit, &command).await {
            Ok(prepared) => prepared,
            Err(error) => return self.calls.conclude(audit, Err(error)).await,
        };
        let Prepared {
            mut request,
            pan,
            in_flight,
        } = prepared;
        let destination = Arc::clone(&request.destination);
        spans::step(
            spans::audit_write(),
            self.store.begin_forward(&in_flight, &audit),
        )
        .await
        .map_err(VaultError::AuditUnavailable)?;

        // The deadline counts from before the first record: a slow commit shortens the
        // exchange, so no replica takes this forward for lost while it is still running.
        let left = in_flight.deadline_at - now();
        request.timeout = left.try_into().unwrap_or_default();
        let sent = if request.timeout.is_zero() {
            Err(EgressFailure::Timeout)
        } else {
            self.egress.send(request).await
        };

        let mut result = audit;
        result.event = Event::ForwardResult;
        result.time = now();
        result.reason = None;
        let name = &destination.spec().name;
        match &sent {
            Ok(answer) => {
                result.outcome = Outcome::Success;
                result.detail = Some(
                    format!(
                        "destination={name} status={} bytes={}",
                        answer.status,
                        answer.body.len()
                    )
                    .into(),
                );
            }
            Err(failure) => {
                result.outcome = Outcome::of(&VaultError::Egress(*failure));
                result.detail =
                    Some(format!("destination={name} error={}", failure.as_str()).into());
            }
        }
        let recorded = spans::step(
            spans::audit_write(),
            self.store.finish_forward(&in_flight.request_id, &result),
        )
        .await;
        // Ok(false): a replica found the mark past its deadline and recorded `unknown`. Once
        // the request may have left, the caller learns what the processor did even if this
        // record is lost: "audit unavailable, nothing released" would be untrue.
        if let Err(error) = &recorded {
            tracing::error!(
                request_id = %result.request_id,
                error = %crate::error::chain(error),
                "forward.result could not be recorded; the caller gets the processor's answer \
                 or failure, and the outcome will be recorded as unknown once its deadline passes"
            );
        }
        let answer = sent.map_err(VaultError::Egress)?;
        let max_gap = crate::pan::card_number_rule().max_gap();
        let digits = pan.expose_digits();
        Ok(Forwarded {
            status: answer.status,
            headers: answer
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), mask_card(value, digits, max_gap)))
                .collect(),
            body: mask_card(&answer.body, digits, max_gap),
        })
    }

    /// Every check, then the card read and the body rendered.
    async fn prepare(
        &self,
        audit: &mut AuditRecord,
        command: &ForwardCommand,
    ) -> Result<Prepared, VaultError> {
        audit.reason = Reason::parse("reason", &command.reason).ok();
        let token_command = TokenCommand {
            merchant_id: command.merchant_id.clone(),
            token: command.token.clone(),
            reason: String::new(),
        };
        let (merchant, token) = self
            .tokens
            .authorize_token_command(audit, Operation::Forward, &token_command)
            .await?;
        self.calls
            .throttle(audit, Operation::Forward, Some(&merchant), 1)?;
        Reason::parse("reason", &command.reason)?;
        let name = command.destination.as_str();
        if !is_name(name) || contains_card_number(name) {
            return Err(InvalidArgument {
                field: "destination",
                problem: "must be a destination's name: 1 to 64 characters from a-z 0-9 . _ -",
            }
            .into());
        }
        audit.detail = Some(format!("destination={name}").into());
        let destination = self.approved(name).await?;
        let template =
            destination
                .template(&command.template)
                .ok_or(VaultError::FailedPrecondition(
                    "template: not approved for this destination",
                ))?;
        let method = Method::from_name(&command.method).ok_or(InvalidArgument {
            field: "method",
            problem: "must be GET, POST, PUT, PATCH or DELETE",
        })?;
        if !destination.spec().methods.contains(&method) {
            return Err(VaultError::FailedPrecondition(
                "method: not approved for this destination",
            ));
        }
        check_path(&command.path)?;
        if !destination.allows_path(&command.path) {
            return Err(VaultError::FailedPrecondition(
                "path: outside the destination's approved patterns",
            ));
        }
        let headers = self.headers(&destination, command)?;
        template.check_variables(&command.variables)?;
        self.count_token(audit, &merchant, &token).await?;

        let card = self.tokens.open_card(&merchant, &token).await?;
        let values = CardValues {
            number: card.pan.expose_digits(),
            expiry: card.expiry.map(|e| (e.month(), e.year())),
        };
        let body = template.render(&values, &command.variables)?;
        let mut headers = headers;
        if method != Method::Get {
            headers.push((
                "content-type".to_owned(),
                template.content_type().header_value().to_owned(),
            ));
        }
        audit.detail = Some(
            format!(
                "destination={name} fingerprint={} template={} method={} path={}",
                destination.fingerprint(),
                command.template,
                method.as_str(),
                command.path
            )
            .into(),
        );
        let begun_at = now();
        let deadline = Duration::from_millis(destination.spec().timeout_ms);
        let in_flight = ForwardInFlight {
            request_id: audit.request_id.clone(),
            caller: audit.caller.as_str().to_owned(),
            merchant_id: merchant.as_str().to_owned(),
            token: token.as_str().to_owned(),
            destination: name.to_owned(),
            fingerprint: destination.fingerprint().to_owned(),
            begun_at,
            deadline_at: begun_at + deadline,
        };
        Ok(Prepared {
            request: OutboundRequest {
                destination: Arc::new(destination),
                method,
                path: command.path.clone(),
                headers,
                body,
                timeout: deadline,
            },
            pan: card.pan,
            in_flight,
        })
    }

    /// The approved version of destination `name`. Unknown, proposed-only and revoked
    /// destinations are refused alike.
    async fn approved(&self, name: &str) -> Result<Destination, VaultError> {
        let refused = VaultError::FailedPrecondition("destination: not an approved destination");
        let Some(stored) = self.store.approved_destination(name).await? else {
            return Err(refused);
        };
        // An approval the vault did not sign, or a stored spec that no longer matches its
        // fingerprint, was written outside the vault.
        let (Some(approver), Some(at), Some(seal)) = (
            stored.approved_by.as_deref(),
            stored.approved_at,
            stored.approval_seal.as_deref(),
        ) else {
            return Err(VaultError::Integrity);
        };
        if !self
            .trail
            .seal_holds(&approval_message(&stored, approver, at), seal)
            .await?
        {
            return Err(VaultError::Integrity);
        }
        Destination::from_stored(&stored.spec_json, &stored.fingerprint)
            .map_err(|_| VaultError::Integrity)
    }

    /// The caller's headers: names the destination allows (compared in lower case), values
    /// without line breaks or card numbers.
    fn headers(
        &self,
        destination: &Destination,
        command: &ForwardCommand,
    ) -> Result<Vec<(String, String)>, VaultError> {
        if command.headers.len() > MAX_HEADERS {
            return Err(InvalidArgument {
                field: "headers",
                problem: "at most 16 headers",
            }
            .into());
        }
        command
            .headers
            .iter()
            .map(|(name, value)| {
                let name = name.to_ascii_lowercase();
                if !destination.spec().request_headers.contains(&name) {
                    return Err(VaultError::FailedPrecondition(
                        "headers: a header the destination does not allow",
                    ));
                }
                if value.len() > 1024
                    || value.bytes().any(|b| b.is_ascii_control() && b != b'\t')
                    || contains_card_number(value)
                {
                    return Err(InvalidArgument {
                        field: "headers",
                        problem: "values must be at most 1024 bytes of text with no line break \
                                  and no card number",
                    }
                    .into());
                }
                Ok((name, value.clone()))
            })
            .collect()
    }

    /// Counts the merchant's token against the caller's distinct-tokens limit (vault-wide, per
    /// hour): a stolen identity cannot forward the vault's cards in bulk. The item is merchant
    /// and token together: a token is unique only within its merchant, so the same token
    /// string at two merchants is two cards.
    async fn count_token(
        &self,
        audit: &AuditRecord,
        merchant: &crate::ids::MerchantId,
        token: &crate::token::Token,
    ) -> Result<(), VaultError> {
        let item = [
            merchant.as_str().as_bytes(),
            b"\0",
            token.as_str().as_bytes(),
        ]
        .concat();
        guard::count_hourly(
            self.store.as_ref(),
            FORWARDED_TOKENS_SCOPE,
            &audit.caller,
            &item,
            self.guard.forwarded_tokens_per_hour,
            Throttle::ForwardedTokens,
        )
        .await
    }

    /// Records `unknown` as the outcome of every forward still in flight whose deadline passed
    /// more than [`OUTCOME_GRACE`] ago (its second record was lost). Returns how many this
    /// replica recorded.
    ///
    /// # Errors
    /// The store's, if the marks cannot be read or a record cannot be written.
    pub(crate) async fn record_unknown_outcomes(&self) -> Result<usize, VaultError> {
        let before = now() - OUTCOME_GRACE;
        let mut recorded = 0;
        for forward in self.store.forwards_in_flight(before).await? {
            let ctx = CallContext {
                caller: crate::ids::CallerId::new(forward.caller.clone()),
                peer: Some(crate::audit::VAULTD.to_owned()),
                request_id: forward.request_id.clone(),
            };
            let mut audit = AuditRecord::begin(&ctx, Operation::Forward);
            audit.event = Event::ForwardResult;
            audit.outcome = Outcome::Unknown;
            audit.merchant =
                crate::ids::MerchantId::from_stored("merchant_id", &forward.merchant_id).ok();
            audit.token = crate::token::Token::from_stored(&forward.token).ok();
            audit.detail = Some(
                format!(
                    "destination={} fingerprint={} outcome not recorded by the replica that \
                     sent it; found in flight after its deadline",
                    forward.destination, forward.fingerprint
                )
                .into(),
            );
            if self
                .store
                .finish_forward(&forward.request_id, &audit)
                .await
                .map_err(VaultError::AuditUnavailable)?
            {
                recorded += 1;
            }
        }
        Ok(recorded)
    }
}
