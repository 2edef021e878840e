//! Publishes one "booking expiring soon" notification and prints how many gateway nodes got it.
//!
//! ```text
//! cargo run -p publisher-lib --example publish -- redis://127.0.0.1:6379 42
//! ```

use std::process::ExitCode;

use publisher::{Event, Publisher, UserId};

const USAGE: &str = "usage: publish <redis-url> <user-id>   e.g. publish redis://127.0.0.1:6379 42";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, user] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let user: UserId = match user.parse() {
        Ok(user) => user,
        Err(err) => {
            eprintln!("bad user id {user:?}: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let publisher = match Publisher::connect(url) {
        Ok(publisher) => publisher,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };

    let event = Event::BookingExpiringSoon {
        booking_id: 1881,
        slot: "A-12".into(),
        minutes_left: 5,
    };
    match publisher.publish(user, event).await {
        Ok(nodes) => {
            println!("published to user_{user}: received by {nodes} gateway node(s)");
            if nodes == 0 {
                println!("(0 means user {user} has no browser connected right now; that is not an error)");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error ({:?}): {err}", err.kind());
            ExitCode::FAILURE
        }
    }
}
