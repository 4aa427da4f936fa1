//! The phase machine of one application's analysis (docs/analysis.md, "Phases"), and the
//! traffic it gives each version. Pure: time comes in as an argument, the state is a value the
//! glue stores (in the `<routemap>-analysis` ConfigMap) so that any leader can continue it.
//!
//! Every transition is a function from the stored state and what is known now to the next
//! state. Evaluations are numbered and the next one is scheduled from the time the last one
//! ran, so a leader that starts late evaluates once, not once per missed interval.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::judge::{MetricResult, Outcome};
use crate::spec::{Analysis, Mode, OnInconclusive, Strategy};

/// Evaluations kept in the state (the newest last).
pub const HISTORY: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// The candidate is not ready; it gets no traffic.
    Waiting,
    /// The candidate gets the current step's traffic and is evaluated every interval.
    Progressing,
    /// Every step passed; the promotion gate has not approved yet.
    AwaitingGate,
    /// The candidate gets all traffic. Latched until the candidate changes.
    Promoted,
    /// The candidate gets no traffic. Latched until the candidate changes.
    RolledBack,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Waiting,
        Phase::Progressing,
        Phase::AwaitingGate,
        Phase::Promoted,
        Phase::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Waiting => "Waiting",
            Phase::Progressing => "Progressing",
            Phase::AwaitingGate => "AwaitingGate",
            Phase::Promoted => "Promoted",
            Phase::RolledBack => "RolledBack",
        }
    }

    /// Whether the phase lasts until the candidate changes.
    pub fn latched(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One evaluation, as kept in the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation {
    /// 1 for the first evaluation of this candidate.
    pub number: u64,
    pub at: Timestamp,
    /// The step (index into the steps) it judged.
    pub step: usize,
    /// The candidate's weight while it was measured (blue-green).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub metrics: Vec<MetricResult>,
}

/// What the glue knows about the versions now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Each version's signature (specs of its resources); a change restarts the analysis.
    pub subject: Vec<String>,
    pub candidate_ready: bool,
    /// The primary is the baseline and takes the rest of the traffic: a ramp starts only
    /// once it is ready, so an early candidate never serves everything alone.
    pub primary_ready: bool,
}

/// The stored state of one application's analysis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The version signatures this analysis judges.
    pub subject: Vec<String>,
    pub phase: Phase,
    /// Index into the steps (blue-green); 0 for canary.
    pub step: usize,
    /// Consecutive passes at this step.
    pub passes: u32,
    /// Failed evaluations of this candidate.
    pub failures: u32,
    /// Consecutive inconclusive evaluations.
    pub inconclusive: u32,
    /// Consecutive evaluations with errors.
    pub errors: u32,
    /// Evaluations so far (the last one's number).
    pub evaluations: u64,
    /// When the phase began (the readiness deadline counts from here while Waiting).
    pub since: Timestamp,
    /// When the next evaluation (or gate request) is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Timestamp>,
    /// Why the phase is what it is, for people.
    pub message: String,
    #[serde(default)]
    pub history: Vec<Evaluation>,
}

/// A change worth telling people about (an Event, a notification).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub warning: bool,
    pub reason: &'static str,
    pub text: String,
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    let span = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
    t.saturating_add(span).unwrap_or(t)
}

impl State {
    /// A new analysis of these versions, waiting for the candidate.
    pub fn new(facts: &Facts, now: Timestamp) -> State {
        State {
            subject: facts.subject.clone(),
            phase: Phase::Waiting,
            step: 0,
            passes: 0,
            failures: 0,
            inconclusive: 0,
            errors: 0,
            evaluations: 0,
            since: now,
            next: None,
            message: "waiting for the candidate to be ready".into(),
            history: Vec::new(),
        }
    }

    fn enter(&mut self, phase: Phase, now: Timestamp, message: String) {
        self.phase = phase;
        self.since = now;
        self.message = message;
        self.next = None;
    }

    /// Whether an evaluation (or a gate request) is due at `now`.
    pub fn due(&self, now: Timestamp) -> bool {
        matches!(self.phase, Phase::Progressing | Phase::AwaitingGate)
            && self.next.is_some_and(|n| n <= now)
    }

    /// When the machine next needs to look, if ever without news: the next evaluation, or the
    /// readiness deadline.
    pub fn wake_at(&self, analysis: &Analysis) -> Option<Timestamp> {
        match self.phase {
            Phase::Progressing | Phase::AwaitingGate => self.next,
            Phase::Waiting => Some(plus(self.since, analysis.progress_deadline)),
            Phase::Promoted | Phase::RolledBack => None,
        }
    }

    /// The candidate's weight at the current step (blue-green).
    pub fn step_weight(&self, analysis: &Analysis) -> Option<u32> {
        analysis.steps.get(self.step).copied()
    }

    fn progress_message(&self, analysis: &Analysis) -> String {
        let passes = format!("{} of {} passes", self.passes, analysis.passes_per_step);
        match analysis.strategy {
            Strategy::BlueGreen => format!(
                "step {} of {}: the candidate gets {}% of requests; {passes}",
                self.step + 1,
                analysis.steps.len(),
                self.step_weight(analysis).unwrap_or(0)
            ),
            Strategy::Canary => format!("the candidate gets matching requests; {passes}"),
        }
    }
}

/// Brings the state up to date with the versions as they are now: starts (or restarts, for a
/// new candidate) the analysis, follows the candidate's readiness and enforces the readiness
/// deadline. Returns the new state and the changes to report.
pub fn observe(
    stored: Option<&State>,
    analysis: &Analysis,
    facts: &Facts,
    now: Timestamp,
) -> (State, Vec<Change>) {
    let mut changes = Vec::new();
    let mut state = match stored {
        Some(s) if s.subject == facts.subject => s.clone(),
        Some(old) => {
            // Said only when something is lost: a waiting analysis that never evaluated
            // (a version still being created, say) just starts over.
            if old.evaluations > 0 || old.phase != Phase::Waiting {
                changes.push(Change {
                    warning: false,
                    reason: "AnalysisRestarted",
                    text: "the versions changed: analysis starts again from the first step".into(),
                });
            }
            State::new(facts, now)
        }
        None => State::new(facts, now),
    };
    // The steps may have been shortened since the state was written.
    state.step = state.step.min(analysis.steps.len().saturating_sub(1));
    match state.phase {
        Phase::Promoted | Phase::RolledBack => {}
        Phase::Waiting if facts.candidate_ready && facts.primary_ready => {
            state.enter(Phase::Progressing, now, String::new());
            state.passes = 0;
            state.next = Some(plus(now, analysis.interval));
            state.message = state.progress_message(analysis);
            changes.push(Change {
                warning: false,
                reason: "AnalysisProgressing",
                text: format!("the candidate is ready: {}", state.message),
            });
        }
        Phase::Waiting if facts.candidate_ready => {
            // Not the candidate's fault: no deadline, and started as soon as the primary is.
            state.message = "the candidate is ready; waiting for the primary to be ready".into();
        }
        Phase::Waiting => {
            if now >= plus(state.since, analysis.progress_deadline) {
                let text = format!(
                    "the candidate was not ready within progressDeadline {}: rolled back",
                    crate::duration::display(analysis.progress_deadline)
                );
                changes.push(roll_back(&mut state, now, text));
            }
        }
        Phase::Progressing | Phase::AwaitingGate if !facts.candidate_ready => {
            let text = format!(
                "the candidate is no longer ready: it gets no traffic until it is (step {} kept)",
                state.step + 1
            );
            state.enter(Phase::Waiting, now, text.clone());
            state.passes = 0;
            changes.push(Change {
                warning: true,
                reason: "AnalysisWaiting",
                text,
            });
        }
        Phase::Progressing | Phase::AwaitingGate => {}
    }
    (state, changes)
}

/// Applies the outcome of the evaluation that was due (`state.due(now)`, phase Progressing).
pub fn evaluated(
    state: &State,
    analysis: &Analysis,
    now: Timestamp,
    outcome: Outcome,
    reason: String,
    metrics: Vec<MetricResult>,
) -> (State, Vec<Change>) {
    let mut s = state.clone();
    let mut changes = Vec::new();
    if s.phase != Phase::Progressing {
        return (s, changes);
    }
    s.evaluations += 1;
    s.history.push(Evaluation {
        number: s.evaluations,
        at: now,
        step: s.step,
        weight: s.step_weight(analysis),
        outcome,
        reason: reason.clone(),
        metrics,
    });
    if s.history.len() > HISTORY {
        s.history.remove(0);
    }
    s.next = Some(plus(now, analysis.interval));
    let why = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    match outcome {
        Outcome::Pass => {
            s.passes += 1;
            s.inconclusive = 0;
            s.errors = 0;
            if s.passes >= analysis.passes_per_step {
                s.passes = 0;
                if s.step + 1 < analysis.steps.len() {
                    s.step += 1;
                    s.message = s.progress_message(analysis);
                    changes.push(Change {
                        warning: false,
                        reason: "AnalysisStep",
                        text: s.message.clone(),
                    });
                } else if analysis.confirm_promotion.is_some() {
                    s.enter(
                        Phase::AwaitingGate,
                        now,
                        "every check passed: waiting for the promotion gate to approve".into(),
                    );
                    s.next = Some(now);
                    changes.push(Change {
                        warning: false,
                        reason: "AnalysisAwaitingGate",
                        text: s.message.clone(),
                    });
                } else {
                    changes.push(promote(&mut s, analysis, now));
                }
                return (s, changes);
            }
            s.message = s.progress_message(analysis);
        }
        Outcome::Fail => {
            s.passes = 0;
            s.failures += 1;
            if s.failures >= analysis.failure_limit {
                let text = format!(
                    "failed {} of {} allowed evaluations{why}: rolled back",
                    s.failures, analysis.failure_limit
                );
                changes.push(roll_back(&mut s, now, text));
                return (s, changes);
            }
            s.message = format!(
                "{}; evaluation {} failed{why}",
                s.progress_message(analysis),
                s.evaluations
            );
            changes.push(Change {
                warning: true,
                reason: "AnalysisFailed",
                text: format!("evaluation {} failed{why}", s.evaluations),
            });
        }
        Outcome::Inconclusive | Outcome::Error => {
            s.passes = 0;
            let (count, limit, what) = if outcome == Outcome::Error {
                s.errors += 1;
                s.inconclusive = 0;
                (s.errors, analysis.error_limit, "with errors")
            } else {
                s.inconclusive += 1;
                s.errors = 0;
                (s.inconclusive, analysis.inconclusive_limit, "inconclusive")
            };
            if limit > 0 && count >= limit && analysis.on_inconclusive == OnInconclusive::Rollback {
                let text = format!(
                    "{count} evaluations in a row {what}{why}: rolled back (onInconclusive)"
                );
                changes.push(roll_back(&mut s, now, text));
                return (s, changes);
            }
            s.message = format!(
                "{}; holding: {count} evaluation(s) in a row {what}{why}",
                s.progress_message(analysis)
            );
            // Said once when the hold begins (and for every error), not at every quiet tick.
            if outcome == Outcome::Error || count == 1 {
                changes.push(Change {
                    warning: outcome == Outcome::Error,
                    reason: if outcome == Outcome::Error {
                        "AnalysisError"
                    } else {
                        "AnalysisHolding"
                    },
                    text: format!(
                        "evaluation {} {what}{why}; holding the current traffic",
                        s.evaluations
                    ),
                });
            }
        }
    }
    (s, changes)
}

/// Applies the promotion gate's answer (phase AwaitingGate).
pub fn gate_answered(
    state: &State,
    analysis: &Analysis,
    now: Timestamp,
    approved: Result<(), String>,
) -> (State, Vec<Change>) {
    let mut s = state.clone();
    if s.phase != Phase::AwaitingGate {
        return (s, Vec::new());
    }
    match approved {
        Ok(()) => {
            let change = promote(&mut s, analysis, now);
            (s, vec![change])
        }
        Err(why) => {
            s.next = Some(plus(now, analysis.interval));
            s.message = format!("waiting for the promotion gate to approve: {why}");
            (s, Vec::new())
        }
    }
}

/// Latches the rollback; the change to report.
fn roll_back(s: &mut State, now: Timestamp, text: String) -> Change {
    s.enter(Phase::RolledBack, now, text.clone());
    Change {
        warning: true,
        reason: "AnalysisRolledBack",
        text,
    }
}

fn promote(s: &mut State, analysis: &Analysis, now: Timestamp) -> Change {
    let routing = match analysis.strategy {
        Strategy::BlueGreen => "the candidate gets 100% of requests, the primary none",
        Strategy::Canary => "every request goes to the candidate",
    };
    let text = format!(
        "promoted: {routing}. To finish, make the candidate (version 1) the primary in the values \
         (the only version, or versions[0]) and run helm upgrade"
    );
    s.enter(Phase::Promoted, now, text.clone());
    Change {
        warning: false,
        reason: "AnalysisPromoted",
        text,
    }
}

/// The traffic each version gets under the analysis: the weights for routing templates and
/// Lookup, and whether the candidate takes the primary's place (`.Promoted`, canary).
///
/// `available` and `weights` are the versions' availability and their weights without
/// analysis. In dry-run mode those are returned unchanged.
pub fn traffic(
    analysis: &Analysis,
    state: &State,
    available: &[bool],
    weights: &[u32],
) -> (Vec<u32>, bool) {
    if analysis.mode == Mode::DryRun || weights.len() != 2 || available.len() != 2 {
        return (weights.to_vec(), false);
    }
    let (primary_up, candidate_up) = (available[0], available[1]);
    match analysis.strategy {
        Strategy::BlueGreen => {
            let share = match state.phase {
                Phase::Waiting | Phase::RolledBack => 0,
                Phase::Progressing | Phase::AwaitingGate => {
                    state.step_weight(analysis).unwrap_or(0)
                }
                Phase::Promoted => 100,
            };
            let share = if candidate_up { share } else { 0 };
            let mut out = vec![if primary_up { 100 - share } else { 0 }, share];
            if out.iter().all(|w| *w == 0) {
                // As without analysis: traffic always has somewhere to go.
                out[0] = 1;
            }
            (out, false)
        }
        Strategy::Canary => {
            let routed = matches!(
                state.phase,
                Phase::Progressing | Phase::AwaitingGate | Phase::Promoted
            );
            let candidate = if routed && candidate_up {
                weights[1].max(1)
            } else {
                0
            };
            let promoted = state.phase == Phase::Promoted && candidate_up;
            let mut out = vec![weights[0], candidate];
            if out.iter().all(|w| *w == 0) {
                out[0] = 1;
            }
            (out, promoted)
        }
    }
}

#[cfg(test)]
mod tests;
