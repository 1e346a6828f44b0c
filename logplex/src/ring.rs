//! The per-app history: the last N lines (1,500 on Heroku), what `manifold logs` shows
//! without `--tail`.

use std::collections::VecDeque;

use crate::line::{Filter, LogLine};

/// A ring of the most recent lines of one app; the oldest line falls out when full.
#[derive(Debug)]
pub(crate) struct Ring {
    lines: VecDeque<LogLine>,
    capacity: usize,
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        Self {
            // Grows on demand: most apps never fill their ring.
            lines: VecDeque::new(),
            capacity,
        }
    }

    pub fn push(&mut self, line: LogLine) {
        if self.capacity == 0 {
            return;
        }
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// The last `n` lines that pass `filter`, oldest first.
    pub fn recent(&self, filter: &Filter, n: usize) -> Vec<LogLine> {
        let mut out: Vec<LogLine> = self
            .lines
            .iter()
            .rev()
            .filter(|l| filter.matches(l))
            .take(n)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::Source;

    #[test]
    fn keeps_exactly_the_last_capacity_lines() {
        let mut ring = Ring::new(1500);
        for i in 0..2000 {
            ring.push(LogLine::now(Source::App, "web.1", i.to_string()));
        }
        let all = ring.recent(&Filter::default(), usize::MAX);
        assert_eq!(all.len(), 1500);
        assert_eq!(all[0].message, "500");
        assert_eq!(all[1499].message, "1999");
    }

    #[test]
    fn recent_takes_the_newest_matching_oldest_first() {
        let mut ring = Ring::new(10);
        for i in 0..6 {
            let process = if i % 2 == 0 { "web.1" } else { "worker.1" };
            ring.push(LogLine::now(Source::App, process, i.to_string()));
        }
        let web = Filter {
            process: Some("web".into()),
            source: None,
        };
        let got: Vec<_> = ring
            .recent(&web, 2)
            .into_iter()
            .map(|l| l.message)
            .collect();
        assert_eq!(got, ["2", "4"]);
    }
}
