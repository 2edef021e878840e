//! Run-queue delay of the processes measured, from `/proc/<pid>/task/*/schedstat` (its second
//! field: nanoseconds the thread spent runnable but waiting for a CPU). Reading it costs the
//! processes nothing; it tells how much of a latency tail is waiting for a core.

use std::collections::BTreeMap;

/// Run-queue wait of every thread of `pid`, summed, in ns. `None` when the process is gone
/// or the kernel keeps no schedstat.
pub fn wait_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += text.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Named groups of processes, each summed.
#[derive(Default, Clone)]
pub struct Groups(pub BTreeMap<&'static str, Vec<u32>>);

impl Groups {
    pub fn add(&mut self, name: &'static str, pids: impl IntoIterator<Item = u32>) {
        self.0.entry(name).or_default().extend(pids);
    }

    /// Each group's run-queue wait now, ns (`None` if a process could not be read).
    pub fn read(&self) -> BTreeMap<&'static str, Option<u64>> {
        self.0
            .iter()
            .map(|(name, pids)| (*name, pids.iter().map(|&p| wait_ns(p)).sum()))
            .collect()
    }
}

/// Each group's run-queue wait between two readings, in µs per `events` (notifications).
pub fn per_event_us(
    before: &BTreeMap<&'static str, Option<u64>>,
    after: &BTreeMap<&'static str, Option<u64>>,
    events: u64,
) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (name, a) in after {
        let value = a
            .zip(before.get(name).copied().flatten())
            .filter(|_| events > 0)
            .map(|(a, b)| crate::round(a.saturating_sub(b) as f64 / 1e3 / events as f64, 2));
        out.insert((*name).to_owned(), value.into());
    }
    out.into()
}
