//! The booking timers on the server: when a booking is made, schedule its two timer
//! notifications ("expires in 5 minutes" and "has expired"); when it is renewed, schedule the
//! same keys again (a reschedule replaces them); when it ends early, cancel them. Any gateway
//! node fires each one once when it is due, whether or not the user's tab is open then (a tab
//! that opens later gets it from history).
//!
//! ```text
//! cargo run -p publisher-lib --example booking -- redis://127.0.0.1:6379 42
//! ```
//!
//! With the gateway running against the same Redis and a socket open on
//! `ws://localhost:8080/ws/notifications/42/`, the "expires soon" notification arrives about
//! 20 s after start, the "expired" one 5 s later: the first times (5 s and 10 s) were replaced
//! by the renewal.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use publisher::{Event, PublishError, Publisher, UserId};

const USAGE: &str = "usage: booking <redis-url> <user-id>   e.g. booking redis://127.0.0.1:6379 42";

/// The keys of a booking's two timers: the caller's names, one item each.
fn keys(booking_id: u64) -> (String, String) {
    (
        format!("booking:{booking_id}:expiring"),
        format!("booking:{booking_id}:expired"),
    )
}

/// Schedules (or reschedules) both timers of a booking that ends at `end`.
async fn schedule_timers(
    publisher: &Publisher,
    user: UserId,
    booking_id: u64,
    slot: &str,
    end: SystemTime,
    warn_before: Duration,
) -> Result<(), PublishError> {
    let (expiring, expired) = keys(booking_id);
    let minutes_left = (warn_before.as_secs() / 60).max(1) as u32;
    let soon = Event::BookingExpiringSoon {
        booking_id,
        slot: slot.into(),
        minutes_left,
    };
    publisher
        .schedule(user, soon, end - warn_before, &expiring)
        .await?;
    let ended = Event::BookingExpired {
        booking_id,
        slot: slot.into(),
    };
    publisher.schedule(user, ended, end, &expired).await
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, user] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let Ok(user) = user.parse::<UserId>() else {
        eprintln!("bad user id {user:?}\n{USAGE}");
        return ExitCode::from(2);
    };
    match run(url, user).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error ({:?}): {err}", err.kind());
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str, user: UserId) -> Result<(), PublishError> {
    let publisher = Publisher::connect(url)?;
    let booking_id = 1881;
    // Shortened times so the example runs in seconds: a real booking would end in hours and
    // warn 5 minutes before.
    let warn_before = Duration::from_secs(5);
    let end = SystemTime::now() + Duration::from_secs(10);
    schedule_timers(&publisher, user, booking_id, "A-12", end, warn_before).await?;
    println!(
        "booking {booking_id}: timers scheduled for {:?} and {:?} from now",
        end_in(end - warn_before),
        end_in(end)
    );

    // The user renews from another device: the same keys again, with the new end time.
    let renewed_end = end + Duration::from_secs(15);
    schedule_timers(
        &publisher,
        user,
        booking_id,
        "A-12",
        renewed_end,
        warn_before,
    )
    .await?;
    println!(
        "booking {booking_id} renewed: the timers were rescheduled to {:?} and {:?} from now (the old times will not fire)",
        end_in(renewed_end - warn_before),
        end_in(renewed_end)
    );

    let sockets = publisher.presence(&[user], false).await?[0].sockets;
    println!("user {user} has {sockets} socket(s) open right now");

    // Had the booking ended early, cancelling both keys would stop them:
    let (expiring, expired) = keys(9999);
    let cancelled = publisher.cancel(&expiring).await? | publisher.cancel(&expired).await?;
    println!("cancelling the timers of booking 9999 (never scheduled): {cancelled}");
    Ok(())
}

fn end_in(at: SystemTime) -> Duration {
    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
    Duration::from_secs(left.as_secs_f64().round() as u64)
}
