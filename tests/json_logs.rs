//! `--log-format json`: a real federation's coordinator and agents write one JSON
//! object per line, round events carry `round`, and every refusal carries a `reason`
//! equal to the label its metric counts it under (the same code, from one place).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use std::time::Duration;

use common::{Federation, task_with, wait_until};
use consortia_pki::Pki;
use serde_json::Value;

const JSON: [&str; 2] = ["--log-format", "json"];

/// Every line of `text` as a JSON object; panics naming the first line that is not one.
fn events(text: &str, file: &str) -> Vec<serde_json::Map<String, Value>> {
    text.lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => m,
            other => panic!("{file}: a line that is not a JSON object ({other:?}):\n{line}"),
        })
        .collect()
}

fn str_field<'a>(e: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a str> {
    e.get(key).and_then(Value::as_str)
}

/// The coordinator's events so far (its standard error).
fn coordinator_events(fed: &Federation) -> Vec<serde_json::Map<String, Value>> {
    events(&fed.read(&fed.coordinator_log(1)), "coordinator log")
}

/// Waits until a coordinator event with `message` containing `needle` and the
/// given `reason` is logged.
fn wait_refusal(fed: &Federation, needle: &str, reason: &str) {
    let found = wait_until(Duration::from_secs(30), || {
        coordinator_events(fed)
            .into_iter()
            .any(|e| {
                str_field(&e, "message").is_some_and(|m| m.contains(needle))
                    && str_field(&e, "reason") == Some(reason)
            })
            .then_some(())
    });
    assert!(
        found.is_some(),
        "no `{needle}` event with reason {reason}\n{}",
        fed.logs()
    );
}

/// GET /metrics: the `reason` labels of `family` with a value above zero.
fn reasons_counted(addr: SocketAddr, family: &str) -> BTreeSet<String> {
    let mut s = TcpStream::connect(addr).expect("metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        })
        .filter_map(|l| {
            let rest = l.split("reason=\"").nth(1)?;
            Some(rest.split('"').next()?.to_string())
        })
        .collect()
}

/// The metrics address the coordinator logged (as a JSON event's `addr` field).
fn metrics_addr(fed: &Federation) -> SocketAddr {
    wait_until(Duration::from_secs(30), || {
        coordinator_events(fed).into_iter().find_map(|e| {
            let m = str_field(&e, "message")?;
            m.contains("metrics listening")
                .then(|| str_field(&e, "addr")?.parse().ok())?
        })
    })
    .unwrap_or_else(|| panic!("no metrics address logged\n{}", fed.logs()))
}

/// One TLS handshake against the coordinator with `cert` (or none), refused.
fn refused_handshake(fed: &Federation, addr: &str, cert: Option<(&Pki, &str)>) {
    let (cert, key) = match cert {
        Some((pki, name)) => (
            Some(pki.partner_cert_path(name)),
            Some(pki.partner_key_path(name)),
        ),
        None => (None, None),
    };
    let identity = cert.as_deref().zip(key.as_deref());
    let config = common::client_tls(&fed.pki.ca_cert_path(), identity, b"h2");
    common::assert_handshake_refused(addr, config);
}

#[test]
fn a_federation_logs_json_lines_with_round_and_reason_codes() {
    // Two of the three partners suffice: the third declines the task by its policy.
    let mut fed = Federation::new(&task_with(2, 2, 60));
    let mut args = vec!["--metrics-listen", "127.0.0.1:0"];
    args.extend(JSON);
    let addr = fed.start_coordinator_with(&args);
    let metrics = metrics_addr(&fed);

    // Refused handshakes: no certificate, and a partner certificate of another CA.
    refused_handshake(&fed, &addr, None);
    let name = fed.partners[0].0.clone();
    let other = Pki::init(
        fed.path("other-pki"),
        &["localhost".to_string()],
        std::slice::from_ref(&name),
    )
    .unwrap();
    refused_handshake(&fed, &addr, Some((&other, &name)));
    wait_refusal(&fed, "TLS handshake refused", "no_certificate");
    wait_refusal(&fed, "TLS handshake refused", "other_ca");
    let counted = reasons_counted(metrics, "consortia_handshakes_refused_total");
    for reason in ["no_certificate", "other_ca"] {
        assert!(counted.contains(reason), "{reason} not in {counted:?}");
    }

    // A policy decline: this partner's policy (the safe defaults) requires secure
    // aggregation and differential privacy; the task has neither.
    std::fs::write(fed.path("strict.toml"), "[policy]\n").unwrap();
    let strict = fed.path("strict.toml");
    let strict = strict.to_str().unwrap();
    let decliner = fed.start_agent_with(2, None, &["--policy", strict, JSON[0], JSON[1]]);
    let status = fed.wait_agent(&decliner, Duration::from_secs(60));
    assert!(!status.success(), "the agent should refuse the task");
    wait_refusal(&fed, "partner declined", "round");
    let counted = reasons_counted(metrics, "consortia_partners_declined_total");
    assert!(counted.contains("round"), "{counted:?}");
    let err = fed.read(&fed.path(&format!("logs/{decliner}.err")));
    let refusal = events(&err, "the declining agent's standard error");
    assert!(
        refusal
            .iter()
            .any(|e| str_field(e, "level") == Some("WARN")
                && str_field(e, "reason") == Some("round")),
        "{err}"
    );

    // The other two run the task.
    for i in 0..2 {
        fed.start_agent_with(i, None, &JSON);
    }
    let status = fed.wait_coordinator(Duration::from_secs(300));
    assert!(status.success(), "coordinator failed\n{}", fed.logs());
    for i in 0..2 {
        let name = fed.partners[i].0.clone();
        assert!(fed.wait_agent(&name, Duration::from_secs(30)).success());
    }

    // Every line of every log is one JSON object with the stable keys.
    let mut logs = vec![("coordinator".to_string(), fed.coordinator_log(1))];
    for (name, _) in &fed.partners {
        for ext in ["out", "err"] {
            logs.push((
                format!("{name}.{ext}"),
                fed.path(&format!("logs/{name}.{ext}")),
            ));
        }
    }
    for (what, path) in &logs {
        for e in events(&fed.read(path), what) {
            for key in ["timestamp", "level", "target", "message"] {
                assert!(e.contains_key(key), "{what}: no `{key}` in {e:?}");
            }
        }
    }
    // Round events carry `round` as a number, with `phase` and `partner` where they apply.
    let coordinator = coordinator_events(&fed);
    let started: Vec<_> = coordinator
        .iter()
        .filter(|e| str_field(e, "message") == Some("round started"))
        .collect();
    assert!(started.len() >= 3, "{started:?}");
    for e in &started {
        assert!(e.get("round").and_then(Value::as_u64).is_some(), "{e:?}");
        assert_eq!(str_field(e, "phase"), Some("collection"), "{e:?}");
    }
    let received: Vec<_> = coordinator
        .iter()
        .filter(|e| str_field(e, "message") == Some("update received"))
        .collect();
    assert!(!received.is_empty(), "{}", fed.logs());
    for e in &received {
        assert!(e.get("round").and_then(Value::as_u64).is_some(), "{e:?}");
        assert!(str_field(e, "partner").is_some(), "{e:?}");
    }
    // The agents' progress (not a terminal): events with round, rounds and phase.
    let name = &fed.partners[0].0;
    let out = fed.read(&fed.path(&format!("logs/{name}.out")));
    let phases: BTreeSet<&str> = events(&out, "agent")
        .iter()
        .filter(|e| e.get("rounds").and_then(Value::as_u64) == Some(2))
        .filter(|e| e.get("round").and_then(Value::as_u64).is_some())
        .filter_map(|e| {
            str_field(e, "phase").map(|p| match p {
                "receiving_model" => "receiving_model",
                "training" => "training",
                "evaluating" => "evaluating",
                "waiting" => "waiting",
                _ => "other",
            })
        })
        .collect();
    for phase in ["receiving_model", "training", "waiting"] {
        assert!(
            phases.contains(phase),
            "no {phase} progress event in\n{out}"
        );
    }
    // The agent's summary line is an event too.
    assert!(
        out.lines().last().is_some_and(|l| l.contains("agent done")),
        "{out}"
    );
}
