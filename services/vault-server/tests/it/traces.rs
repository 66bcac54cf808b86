//! Traces, as a collector receives them: an OTLP/gRPC receiver built from the official protocol
//! definitions (`opentelemetry-proto`'s `TraceService`, served by tonic) takes vaultd's export.
//! The caller's trace is continued, the call's child spans are there, a `traceparent` that
//! carries a card number is dropped, and no test PAN is in any span, metric or log line.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::metadata::MetadataValue;

use crate::harness::*;

/// Everything the receiver was sent.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Received {
    /// Starts a receiver on a free loopback port; returns its address.
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    fn spans(&self) -> Vec<Span> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|request| &request.resource_spans)
            .flat_map(|resource| &resource.scope_spans)
            .flat_map(|scope| scope.spans.clone())
            .collect()
    }

    fn service_names(&self) -> HashSet<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|request| &request.resource_spans)
            .filter_map(|resource| resource.resource.as_ref())
            .flat_map(|resource| &resource.attributes)
            .filter(|kv| kv.key == "service.name")
            .map(|kv| format!("{:?}", kv.value))
            .collect()
    }
}

fn traced<T>(message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", MetadataValue::try_from(traceparent).unwrap());
    request.metadata_mut().insert(
        "baggage",
        MetadataValue::from_static("pan=4111111111111111"),
    );
    request
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value| match &value.value {
            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                Some(s.clone())
            }
            _ => None,
        })
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// A trace its caller did not sample.
const UNSAMPLED_TRACE: &str = "7bf92f3577b34da6a3ce929d0e0e4737";
/// A trace id whose digits hold a Luhn-valid test card (a caller that put one there).
const CARD_TRACE: &str = "5555555555554444aaaaaaaaaaaaaaaa";

#[tokio::test]
async fn a_collector_receives_the_callers_trace_continued_with_its_child_spans_and_no_pan() {
    let received = Received::default();
    let collector = received.serve().await;
    let dir = tempfile::tempdir().unwrap();
    vault_kms::DangerLocalFileKek::create(&dir.path().join("kek.key")).unwrap();
    let vault = TestVault::start_in(
        dir,
        "url = \"sqlite:vault.db\"\n",
        &format!(
            "{DEV_KEK}[telemetry]\nmetrics_listen = \"127.0.0.1:0\"\n\
             otlp_endpoint = \"http://{collector}\"\nservice_name = \"vaultd-test\"\n"
        ),
        // The SDK's batch delay (5 s by default): export soon after the calls.
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
        "info",
    )
    .await;

    let pan = "4000056655665556";
    let parent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let mut gateway = vault.client("gateway").await;
    let token = gateway
        .tokenize(traced(tokenize_request("m1", pan), &parent))
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut payments = vault.client("payments").await;
    let detokenized = payments
        .detokenize(traced(detokenize_request("m1", &token), &parent))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(detokenized.pan, pan);
    // A traceparent carrying a card number: the call succeeds, in a trace of its own.
    let carrying = format!("00-{CARD_TRACE}-{CALLER_SPAN}-01");
    let other_pan = "5555555555554444";
    gateway
        .tokenize(traced(tokenize_request("m1", other_pan), &carrying))
        .await
        .unwrap();

    // A caller that did not sample its trace: the call follows it and exports nothing.
    let unsampled = format!("00-{UNSAMPLED_TRACE}-{CALLER_SPAN}-00");
    gateway
        .get_token_metadata(traced(
            vault_proto::v1::GetTokenMetadataRequest {
                merchant_id: "m1".to_owned(),
                token: token.clone(),
            },
            &unsampled,
        ))
        .await
        .unwrap();

    // Three sampled calls: three `call` spans.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = received.spans();
        if spans.iter().filter(|s| s.name == "call").count() >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the collector got {} spans:\n{}",
            spans.len(),
            vault.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing more arrives: the unsampled call exported no span at all.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let spans = received.spans();
    assert_eq!(
        spans.iter().filter(|s| s.name == "call").count(),
        3,
        "{spans:#?}"
    );
    let hex = |bytes: &[u8]| hex::encode(bytes);
    let ours: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == TRACE).collect();
    let calls: Vec<&&Span> = ours.iter().filter(|s| s.name == "call").collect();
    assert_eq!(calls.len(), 2, "{ours:#?}");
    for call in &calls {
        // The caller's span is the call's parent: the trace is continued, not restarted.
        assert_eq!(hex(&call.parent_span_id), CALLER_SPAN);
        assert!(attribute(call, "request_id").is_some(), "{call:?}");
        assert_eq!(attribute(call, "merchant").as_deref(), Some("m1"));
        assert_eq!(attribute(call, "outcome").as_deref(), Some("OK"));
    }
    let names: HashSet<&str> = ours.iter().map(|s| s.name.as_str()).collect();
    for child in ["store", "group_commit.wait", "kek", "audit.write"] {
        assert!(names.contains(child), "no {child} span in {names:?}");
    }
    // Every child hangs under a span of the same trace.
    let ids: HashSet<Vec<u8>> = ours.iter().map(|s| s.span_id.clone()).collect();
    for span in ours.iter().filter(|s| s.name != "call") {
        assert!(
            ids.contains(&span.parent_span_id),
            "{span:?} has no parent here"
        );
    }

    // The card-carrying trace context was dropped: no span has that trace id, and the call
    // it came with has no remote parent.
    assert!(spans.iter().all(|s| hex(&s.trace_id) != CARD_TRACE));
    assert!(spans.iter().all(|s| hex(&s.trace_id) != UNSAMPLED_TRACE));
    let own = spans
        .iter()
        .find(|s| s.name == "call" && hex(&s.trace_id) != TRACE)
        .unwrap();
    assert!(own.parent_span_id.is_empty(), "{own:?}");
    assert_eq!(
        received.service_names(),
        HashSet::from([format!(
            "{:?}",
            Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                value: Some(
                    opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                        "vaultd-test".to_owned()
                    )
                )
            })
        )])
    );

    // Every log line of a call carries its request id and its trace id.
    let logs = vault.logs();
    let call_lines: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("vault_server::grpc") && line.contains(" call "))
        .collect();
    assert_eq!(call_lines.len(), 4, "{logs}");
    for line in &call_lines {
        assert!(line.contains("request_id="), "{line}");
        assert!(line.contains("trace_id="), "{line}");
    }
    assert!(logs.contains(&format!("trace_id=\"{TRACE}\"")), "{logs}");
    assert!(
        logs.contains(&format!("trace_id=\"{UNSAMPLED_TRACE}\"")),
        "{logs}"
    );

    // No test PAN in any span (names, attributes, events, everything the protobuf holds),
    // the metrics or the logs; no baggage either.
    let everything = format!("{:?}", received.0.lock().unwrap());
    let (_, metrics) = http("GET", &vault.metrics_addr(), "/metrics").await;
    for leaked in [pan, other_pan, "4111111111111111", CARD_TRACE] {
        assert!(!everything.contains(leaked), "{leaked} in the spans");
        assert!(!metrics.contains(leaked), "{leaked} in the metrics");
        assert!(!logs.contains(leaked), "{leaked} in the logs");
    }
    assert!(!everything.contains("baggage") && !everything.contains("pan="));
}

/// A forward is traced like any call, and no span holds the card it sent or the processor
/// echoed back.
#[tokio::test]
async fn a_forward_leaves_no_card_in_any_span() {
    use crate::forward::{approve, forward, spec, tokenize};
    let received = Received::default();
    let collector = received.serve().await;
    let dir = tempfile::tempdir().unwrap();
    vault_kms::DangerLocalFileKek::create(&dir.path().join("kek.key")).unwrap();
    let vault = TestVault::start_in(
        dir,
        "url = \"sqlite:vault.db\"\n",
        &format!("{DEV_KEK}[telemetry]\notlp_endpoint = \"http://{collector}\"\n"),
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
        "trace",
    )
    .await;
    let processor = crate::processor::Processor::start().await;
    approve(&vault, &spec("acme", &processor)).await;
    let pan = random_pan("4");
    let token = tokenize(&vault, &pan).await;
    let parent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let mut payments = vault.client("payments").await;
    for path in ["/v1/charges", "/v1/echo/unicode", "/v1/redirect"] {
        let _ = payments
            .forward(traced(
                forward(&token, "acme", "charge_json", path),
                &parent,
            ))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while received
        .spans()
        .iter()
        .filter(|s| s.name == "call" && attribute(s, "merchant").as_deref() == Some("m1"))
        .count()
        < 4
    {
        assert!(Instant::now() < deadline, "{:#?}", received.spans());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let everything = format!("{:?}", received.0.lock().unwrap());
    assert!(!everything.contains(&pan), "the card in a span");
    assert!(!vault.logs().contains(&pan), "the card in the logs");
}
