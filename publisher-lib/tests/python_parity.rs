//! The Python package (clients/python) stays the same publisher as this crate: it ships this
//! crate's publish script byte for byte, and its typed events have the same names, levels,
//! default messages and data fields as [`Event`] (asked of the package itself, with
//! `python3`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use publisher::{Event, Notification};
use serde_json::{json, Value};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("publisher-lib sits in the workspace")
        .to_path_buf()
}

const PYTHON_PACKAGE: &str = "clients/python/src/notification_gateway";

#[test]
fn the_python_package_ships_publish_lua_byte_for_byte() {
    let ours = publisher::wire::PUBLISH_SCRIPT.as_bytes();
    let shipped_path = repo_root().join(PYTHON_PACKAGE).join("publish.lua");
    let shipped = std::fs::read(&shipped_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", shipped_path.display()));
    assert!(
        shipped == ours,
        "{} differs from publisher-lib/src/publish.lua: copy it over \
         (`cp publisher-lib/src/publish.lua {PYTHON_PACKAGE}/`) so Python and Rust publishers \
         run the same script",
        shipped_path.display()
    );
}

#[test]
fn the_python_package_ships_presence_lua_byte_for_byte() {
    let ours = publisher::schedule::PRESENCE_SCRIPT.as_bytes();
    let shipped_path = repo_root().join(PYTHON_PACKAGE).join("presence.lua");
    let shipped = std::fs::read(&shipped_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", shipped_path.display()));
    assert!(
        shipped == ours,
        "{} differs from publisher-lib/src/presence.lua: copy it over \
         (`cp publisher-lib/src/presence.lua {PYTHON_PACKAGE}/`)",
        shipped_path.display()
    );
}

/// One of each event, with the cases whose message or data change shape.
fn samples() -> Vec<Event> {
    vec![
        Event::BookingExpiringSoon {
            booking_id: 1881,
            slot: "A-12".into(),
            minutes_left: 5,
        },
        Event::BookingExpiringSoon {
            booking_id: 1,
            slot: "A-1".into(),
            minutes_left: 1,
        },
        Event::BookingExpired {
            booking_id: 2,
            slot: "B-07".into(),
        },
        Event::BookingRenewed {
            booking_id: 3,
            new_end: "2025-06-01T18:30:00+02:00".into(),
        },
        Event::BookingRenewalFailed {
            booking_id: 4,
            reason: "the slot is taken".into(),
        },
        Event::SlotAutoExpired {
            booking_id: 5,
            slot: "C-3".into(),
        },
        Event::BookingDeclined {
            booking_id: 6,
            reason: Some("lot closed".into()),
        },
        Event::BookingDeclined {
            booking_id: 6,
            reason: Some("  ".into()),
        },
        Event::BookingDeclined {
            booking_id: 6,
            reason: None,
        },
        Event::CashPaymentVerified {
            booking_id: 7,
            amount: "12.50".into(),
            currency: "EUR".into(),
        },
        Event::BookingCreated {
            booking_id: 8,
            lot: "Central Garage".into(),
            customer: "Dana Smith".into(),
        },
        Event::CarWashCompleted {
            booking_id: u64::MAX,
            service: "Premium wash".into(),
        },
        Event::EmployeeAssigned {
            employee_id: 311,
            employee_name: "Sam Lee".into(),
            lot: "Harbour".into(),
        },
    ]
}

/// Asks the Python package for its catalogue and for the notification of each sample.
const PYTHON_CATALOGUE: &str = r#"
import dataclasses, json, sys
from notification_gateway.events import EVENTS, Event
cases = json.load(sys.stdin)
print(json.dumps({
    "names": list(EVENTS),
    "fields": {name: [f.name for f in dataclasses.fields(cls)] for name, cls in EVENTS.items()},
    "notifications": [
        json.loads(Event.from_name_and_data(name, data).to_notification().to_payload(1 << 20))
        for name, data in cases
    ],
}))
"#;

#[test]
fn the_python_events_match_the_rust_events() {
    let python = ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|p| Command::new(p).arg("-c").arg("import redis").output().is_ok_and(|o| o.status.success()))
        .expect("python3 with redis-py is needed: `apt-get install -y python3-pip && python3 -m pip install redis` (./tests/run.sh does it)");
    let samples = samples();
    let cases: Vec<Value> = samples
        .iter()
        .map(|event| json!([event.name(), Value::Object(event.data())]))
        .collect();
    let mut child = Command::new(python)
        .args(["-c", PYTHON_CATALOGUE])
        .env("PYTHONPATH", repo_root().join("clients/python/src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::Array(cases).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Python catalogue could not be read:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("python printed JSON");

    assert_eq!(
        answer["names"],
        json!(Event::NAMES),
        "event names, in order"
    );
    for event in &samples {
        let data = event.data();
        let rust_fields: Vec<&str> = data.keys().map(String::as_str).collect();
        if !matches!(event, Event::BookingDeclined { reason: None, .. }) {
            let mut python_fields: Vec<&str> = answer["fields"][event.name()]
                .as_array()
                .unwrap_or_else(|| panic!("Python has no event {}", event.name()))
                .iter()
                .filter_map(Value::as_str)
                .collect();
            python_fields.sort_unstable();
            assert_eq!(python_fields, rust_fields, "{} data fields", event.name());
        }
    }
    for (event, python) in samples
        .iter()
        .zip(answer["notifications"].as_array().unwrap())
    {
        let rust = serde_json::to_value(Notification::from(event.clone())).unwrap();
        assert_eq!(
            python,
            &rust,
            "{}: Python and Rust build different notifications",
            event.name()
        );
    }
}
