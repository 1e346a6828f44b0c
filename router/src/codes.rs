//! Heroku's router error codes: each names who failed (the app, the dyno, the client) in
//! the log line and chooses the status. Wording as in Heroku's error-code reference.

/// A router error, as logged (`code=H12 desc="Request timeout"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    H10,
    H11,
    H12,
    H13,
    H14,
    H15,
    H17,
    H18,
    H19,
    H20,
    H21,
    H27,
    H28,
    H80,
}

impl Code {
    /// Every code, in the order metrics list them.
    pub(crate) const ALL: [Code; 14] = [
        Code::H10,
        Code::H11,
        Code::H12,
        Code::H13,
        Code::H14,
        Code::H15,
        Code::H17,
        Code::H18,
        Code::H19,
        Code::H20,
        Code::H21,
        Code::H27,
        Code::H28,
        Code::H80,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Code::H10 => "H10",
            Code::H11 => "H11",
            Code::H12 => "H12",
            Code::H13 => "H13",
            Code::H14 => "H14",
            Code::H15 => "H15",
            Code::H17 => "H17",
            Code::H18 => "H18",
            Code::H19 => "H19",
            Code::H20 => "H20",
            Code::H21 => "H21",
            Code::H27 => "H27",
            Code::H28 => "H28",
            Code::H80 => "H80",
        }
    }

    pub(crate) fn desc(self) -> &'static str {
        match self {
            Code::H10 => "App crashed",
            Code::H11 => "Backlog too deep",
            Code::H12 => "Request timeout",
            Code::H13 => "Connection closed without response",
            Code::H14 => "No web dynos running",
            Code::H15 => "Idle connection",
            Code::H17 => "Poorly formatted HTTP response",
            Code::H18 => "Server Request Interrupted",
            Code::H19 => "Backend connection timeout",
            Code::H20 => "App boot timeout",
            Code::H21 => "Backend connection refused",
            Code::H27 => "Client Request Interrupted",
            Code::H28 => "Client Connection Idle",
            Code::H80 => "Maintenance mode",
        }
    }

    /// The status logged: 499 when the client gave up (it gets nothing), else 503.
    pub(crate) fn status(self) -> u16 {
        if self.client_side() {
            499
        } else {
            503
        }
    }

    /// Client-side codes are logged `at=info`: nothing went wrong with the app.
    pub(crate) fn client_side(self) -> bool {
        matches!(self, Code::H27 | Code::H28)
    }

    /// Logged `at=info`: the client gave up, or the app is in maintenance on purpose
    /// (as Heroku logs H80).
    pub(crate) fn logged_as_info(self) -> bool {
        self.client_side() || self == Code::H80
    }

    pub(crate) fn index(self) -> usize {
        Code::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}
