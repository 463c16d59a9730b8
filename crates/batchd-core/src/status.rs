//! The ten job statuses of Bedrock batch inference, plus `Created` (a batch-job API job
//! waiting for its start), and their legal transitions.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatusError {
    #[error("unknown job status {0:?}")]
    Unknown(String),
    #[error("illegal job status transition {from} -> {to}")]
    IllegalTransition { from: JobStatus, to: JobStatus },
    #[error("unknown invocation type {0:?} (expected Converse or InvokeModel)")]
    UnknownInvocationType(String),
}

/// Job status, spelled exactly as Bedrock spells it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Created through the batch-job API and waiting for its `start` (not a Bedrock status:
    /// the Bedrock API never shows such a job).
    Created,
    Submitted,
    Validating,
    Scheduled,
    InProgress,
    Completed,
    PartiallyCompleted,
    Failed,
    Stopping,
    Stopped,
    Expired,
}

impl JobStatus {
    /// Bedrock's ten statuses (every status but [`JobStatus::Created`]).
    pub const ALL: [JobStatus; 10] = [
        Self::Submitted,
        Self::Validating,
        Self::Scheduled,
        Self::InProgress,
        Self::Completed,
        Self::PartiallyCompleted,
        Self::Failed,
        Self::Stopping,
        Self::Stopped,
        Self::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "Created",
            Self::Submitted => "Submitted",
            Self::Validating => "Validating",
            Self::Scheduled => "Scheduled",
            Self::InProgress => "InProgress",
            Self::Completed => "Completed",
            Self::PartiallyCompleted => "PartiallyCompleted",
            Self::Failed => "Failed",
            Self::Stopping => "Stopping",
            Self::Stopped => "Stopped",
            Self::Expired => "Expired",
        }
    }

    /// A terminal job never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed
                | Self::PartiallyCompleted
                | Self::Failed
                | Self::Stopped
                | Self::Expired
        )
    }

    /// The transitions of the spec's A2: Submitted → Validating → (Failed | Scheduled) →
    /// InProgress → (Completed | PartiallyCompleted | Failed); Scheduled → Expired; any
    /// non-terminal → Stopping → Stopped.
    pub fn can_transition_to(self, to: JobStatus) -> bool {
        use JobStatus::*;
        match (self, to) {
            (Created, Submitted)
            | (Submitted, Validating)
            | (Validating, Failed | Scheduled)
            | (Scheduled, InProgress | Expired)
            | (InProgress, Completed | PartiallyCompleted | Failed)
            | (Stopping, Stopped) => true,
            (from, Stopping) => !from.is_terminal() && from != Stopping,
            _ => false,
        }
    }

    /// Checks a transition; the error names both ends.
    pub fn transition(self, to: JobStatus) -> Result<JobStatus, StatusError> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(StatusError::IllegalTransition { from: self, to })
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = StatusError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .chain([Self::Created])
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StatusError::Unknown(s.to_owned()))
    }
}

/// How a job's `modelInput` bodies are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvocationType {
    /// The model-agnostic Converse request body.
    Converse,
    /// The model family's native InvokeModel body.
    InvokeModel,
}

impl InvocationType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Converse => "Converse",
            Self::InvokeModel => "InvokeModel",
        }
    }
}

impl FromStr for InvocationType {
    type Err = StatusError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Converse" | "converse" => Ok(Self::Converse),
            "InvokeModel" | "invoke-model" | "invokemodel" => Ok(Self::InvokeModel),
            _ => Err(StatusError::UnknownInvocationType(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::JobStatus::*;
    use super::*;

    #[test]
    fn statuses_round_trip_their_wire_names() {
        for st in JobStatus::ALL.into_iter().chain([Created]) {
            assert_eq!(st.as_str().parse::<JobStatus>().unwrap(), st);
        }
        assert!(Created.can_transition_to(Submitted));
        assert!(Created.can_transition_to(Stopping));
        assert!(!Created.can_transition_to(InProgress));
        assert!(!Submitted.can_transition_to(Created));
        assert!("inprogress".parse::<JobStatus>().is_err());
    }

    #[test]
    fn happy_path_and_failure_transitions_are_legal() {
        let path = [Submitted, Validating, Scheduled, InProgress, Completed];
        for w in path.windows(2) {
            assert!(w[0].can_transition_to(w[1]), "{} -> {}", w[0], w[1]);
        }
        assert!(Validating.can_transition_to(Failed));
        assert!(InProgress.can_transition_to(PartiallyCompleted));
        assert!(InProgress.can_transition_to(Failed));
        assert!(Scheduled.can_transition_to(Expired));
    }

    #[test]
    fn stop_applies_to_non_terminal_jobs_only() {
        for st in JobStatus::ALL {
            let expect = !st.is_terminal() && st != Stopping;
            assert_eq!(st.can_transition_to(Stopping), expect, "{st}");
        }
        assert!(Stopping.can_transition_to(Stopped));
        assert!(Stopping.transition(Completed).is_err());
    }

    #[test]
    fn terminal_states_never_move() {
        for from in JobStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobStatus::ALL {
                assert!(!from.can_transition_to(to), "{from} -> {to}");
            }
        }
        assert!(!Submitted.can_transition_to(InProgress));
        assert!(!InProgress.can_transition_to(Expired));
    }
}
