//! Host ports for web dynos' published ports, from the configured range.

use super::*;

/// Hands out host ports for web dynos' `$PORT`, each to one dyno of this agent at a time.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    range: PortRange,
    used: BTreeSet<u16>,
}

/// Every port of the range is taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free host port in {range}")]
pub struct PortsExhausted {
    pub range: PortRange,
}

impl PortAllocator {
    pub fn new(range: PortRange) -> Self {
        PortAllocator {
            range,
            used: BTreeSet::new(),
        }
    }

    /// The lowest free port.
    pub fn allocate(&mut self) -> Result<u16, PortsExhausted> {
        let port = (self.range.start..=self.range.end)
            .find(|p| !self.used.contains(p))
            .ok_or(PortsExhausted { range: self.range })?;
        self.used.insert(port);
        Ok(port)
    }

    /// Marks a port a re-adopted dyno already publishes as taken.
    pub fn claim(&mut self, port: u16) {
        self.used.insert(port);
    }

    /// Whether some dyno or service of this agent holds `port`.
    pub fn is_used(&self, port: u16) -> bool {
        self.used.contains(&port)
    }

    pub fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }
}
