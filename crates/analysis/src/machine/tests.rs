use super::*;
use crate::spec;

fn analysis(text: &str) -> Analysis {
    spec::parse(&serde_yaml::from_str(text).expect("yaml")).expect("valid analysis")
}

fn bg() -> Analysis {
    analysis("strategy: blue-green\ninterval: 10s\nprogressDeadline: 1m\nsteps: [10, 25, 50, 100]")
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).expect("time")
}

fn facts(ready: bool) -> Facts {
    Facts {
        subject: vec!["p".into(), "c".into()],
        candidate_ready: ready,
        primary_ready: true,
    }
}

fn pass(s: &State, a: &Analysis, now: Timestamp) -> State {
    assert!(s.due(now), "not due at {now}: {s:?}");
    evaluated(s, a, now, Outcome::Pass, String::new(), vec![]).0
}

fn with(s: &State, a: &Analysis, now: Timestamp, outcome: Outcome) -> (State, Vec<Change>) {
    assert!(s.due(now), "not due at {now}: {s:?}");
    evaluated(s, a, now, outcome, format!("m: {outcome}"), vec![])
}

fn traffic_of(a: &Analysis, s: &State) -> Vec<u32> {
    traffic(a, s, &[true, true], &[1, 1]).0
}

#[test]
fn a_good_candidate_ramps_through_every_step_then_is_promoted() {
    let a = bg();
    let (s, _) = observe(None, &a, &facts(false), t(0));
    assert_eq!(s.phase, Phase::Waiting);
    assert_eq!(traffic(&a, &s, &[true, false], &[1, 0]).0, vec![100, 0]);
    let (s, changes) = observe(Some(&s), &a, &facts(true), t(5));
    assert_eq!(s.phase, Phase::Progressing);
    assert_eq!(changes[0].reason, "AnalysisProgressing");
    assert_eq!(
        s.next,
        Some(t(15)),
        "the first evaluation waits one interval of traffic"
    );
    assert!(!s.due(t(14)));
    let mut s = s;
    let mut seen = vec![traffic_of(&a, &s)];
    for k in 1..=4 {
        s = pass(&s, &a, t(5 + 10 * k));
        seen.push(traffic_of(&a, &s));
    }
    assert_eq!(
        seen,
        vec![
            vec![90, 10],
            vec![75, 25],
            vec![50, 50],
            vec![0, 100],
            vec![0, 100]
        ]
    );
    assert_eq!(s.phase, Phase::Promoted);
    assert!(
        s.message
            .contains("make the candidate (version 1) the primary"),
        "{}",
        s.message
    );
    assert_eq!(s.evaluations, 4);
    assert_eq!(
        s.history.iter().map(|e| e.step).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert_eq!(
        s.history.iter().map(|e| e.weight).collect::<Vec<_>>(),
        vec![Some(10), Some(25), Some(50), Some(100)]
    );
    // Latched: later observations change nothing.
    let (again, changes) = observe(Some(&s), &a, &facts(true), t(500));
    assert_eq!(again, s);
    assert!(changes.is_empty());
    assert!(!again.due(t(10_000)));
}

#[test]
fn passes_per_step_must_be_consecutive_and_holds_resume_by_themselves() {
    let a = analysis("strategy: blue-green\ninterval: 10s\nsteps: [20, 100]\npassesPerStep: 2");
    let (s, _) = observe(None, &a, &facts(true), t(0));
    let s = pass(&s, &a, t(10));
    assert_eq!((s.step, s.passes), (0, 1));
    let (s, changes) = with(&s, &a, t(20), Outcome::Inconclusive);
    assert_eq!(
        (s.phase, s.step, s.passes, s.inconclusive),
        (Phase::Progressing, 0, 0, 1)
    );
    assert_eq!(changes[0].reason, "AnalysisHolding");
    assert_eq!(traffic_of(&a, &s), vec![80, 20], "holding keeps the weight");
    // A second quiet evaluation says nothing new.
    let (s, changes) = with(&s, &a, t(30), Outcome::Inconclusive);
    assert!(changes.is_empty(), "{changes:?}");
    assert!(
        s.message.contains("2 evaluation(s) in a row inconclusive"),
        "{}",
        s.message
    );
    let s = pass(&s, &a, t(40));
    assert_eq!((s.step, s.passes, s.inconclusive), (0, 1, 0));
    let s = pass(&s, &a, t(50));
    assert_eq!((s.step, s.passes), (1, 0));
    assert_eq!(traffic_of(&a, &s), vec![0, 100]);
}

#[test]
fn failures_roll_back_at_the_limit_and_latch() {
    let a = analysis("strategy: blue-green\ninterval: 10s\nsteps: [10, 50]\nfailureLimit: 2");
    let (s, _) = observe(None, &a, &facts(true), t(0));
    let (s, changes) = with(&s, &a, t(10), Outcome::Fail);
    assert_eq!((s.phase, s.failures), (Phase::Progressing, 1));
    assert_eq!(changes[0].reason, "AnalysisFailed");
    assert!(changes[0].warning);
    let s = pass(&s, &a, t(20));
    assert_eq!(
        s.step, 1,
        "a pass after a failure advances; failures are counted in total"
    );
    let (s, changes) = with(&s, &a, t(30), Outcome::Fail);
    assert_eq!(s.phase, Phase::RolledBack);
    assert_eq!(changes[0].reason, "AnalysisRolledBack");
    assert!(s.message.contains("failed 2 of 2"), "{}", s.message);
    assert_eq!(traffic_of(&a, &s), vec![100, 0]);
    let (again, _) = observe(Some(&s), &a, &facts(true), t(1000));
    assert_eq!(
        again.phase,
        Phase::RolledBack,
        "latched while the candidate is the same"
    );
    // A new candidate starts over.
    let new = Facts {
        subject: vec!["p".into(), "c2".into()],
        candidate_ready: false,
        primary_ready: true,
    };
    let (fresh, changes) = observe(Some(&again), &a, &new, t(1001));
    assert_eq!(
        (fresh.phase, fresh.step, fresh.failures, fresh.evaluations),
        (Phase::Waiting, 0, 0, 0)
    );
    assert_eq!(changes[0].reason, "AnalysisRestarted");
}

#[test]
fn errors_hold_and_roll_back_only_when_told_to() {
    let hold = analysis("strategy: canary\ninterval: 10s\nerrorLimit: 2");
    let (mut s, _) = observe(None, &hold, &facts(true), t(0));
    for k in 1..=5 {
        let (next, changes) = with(&s, &hold, t(10 * k), Outcome::Error);
        assert_eq!(next.phase, Phase::Progressing);
        assert_eq!(
            changes[0].reason, "AnalysisError",
            "every error is reported"
        );
        s = next;
    }
    let rollback =
        analysis("strategy: canary\ninterval: 10s\nerrorLimit: 2\nonInconclusive: rollback");
    let (s, _) = observe(None, &rollback, &facts(true), t(0));
    let (s, _) = with(&s, &rollback, t(10), Outcome::Error);
    assert_eq!(s.phase, Phase::Progressing);
    let (s, _) = with(&s, &rollback, t(20), Outcome::Error);
    assert_eq!(s.phase, Phase::RolledBack);
    let inconclusive =
        analysis("strategy: canary\ninterval: 10s\ninconclusiveLimit: 1\nonInconclusive: rollback");
    let (s, _) = observe(None, &inconclusive, &facts(true), t(0));
    let (s, _) = with(&s, &inconclusive, t(10), Outcome::Inconclusive);
    assert_eq!(s.phase, Phase::RolledBack);
}

#[test]
fn the_readiness_deadline_rolls_back_and_unreadiness_waits_at_the_same_step() {
    let a = bg();
    let (s, _) = observe(None, &a, &facts(false), t(0));
    let (s, changes) = observe(Some(&s), &a, &facts(false), t(59));
    assert_eq!(s.phase, Phase::Waiting);
    assert!(changes.is_empty());
    assert_eq!(s.wake_at(&a), Some(t(60)));
    let (late, changes) = observe(Some(&s), &a, &facts(false), t(60));
    assert_eq!(late.phase, Phase::RolledBack);
    assert!(
        changes[0].text.contains("progressDeadline 1m"),
        "{}",
        changes[0].text
    );

    let (s, _) = observe(None, &a, &facts(true), t(0));
    let s = pass(&s, &a, t(10));
    assert_eq!(s.step, 1);
    let (s, changes) = observe(Some(&s), &a, &facts(false), t(12));
    assert_eq!((s.phase, s.step), (Phase::Waiting, 1));
    assert_eq!(changes[0].reason, "AnalysisWaiting");
    assert_eq!(traffic(&a, &s, &[true, false], &[1, 0]).0, vec![100, 0]);
    let (s, _) = observe(Some(&s), &a, &facts(true), t(20));
    assert_eq!((s.phase, s.step), (Phase::Progressing, 1));
    assert_eq!(traffic_of(&a, &s), vec![75, 25]);
}

#[test]
fn a_late_leader_evaluates_once_and_does_not_replay_missed_intervals() {
    let a = bg();
    let (s, _) = observe(None, &a, &facts(true), t(0));
    // Stored, then nobody looked for an hour.
    let json = serde_json::to_string(&s).expect("serializes");
    let restored: State = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(restored, s);
    let now = t(3600);
    assert!(restored.due(now));
    let s = pass(&restored, &a, now);
    assert_eq!(s.step, 1);
    assert_eq!(s.next, Some(t(3610)));
    assert!(
        !s.due(now),
        "one evaluation per interval, not one per missed interval"
    );
}

#[test]
fn the_promotion_gate_is_asked_until_it_approves() {
    let a = analysis(
        "strategy: canary\ninterval: 10s\ngates: {confirmPromotion: {url: 'http://gate'}}",
    );
    let (s, _) = observe(None, &a, &facts(true), t(0));
    let s = pass(&s, &a, t(10));
    assert_eq!(s.phase, Phase::AwaitingGate);
    assert!(s.due(t(10)), "the gate is asked at once");
    let (s, changes) = gate_answered(&s, &a, t(10), Err("403 Forbidden".into()));
    assert_eq!(s.phase, Phase::AwaitingGate);
    assert!(changes.is_empty());
    assert_eq!(s.next, Some(t(20)));
    assert_eq!(traffic(&a, &s, &[true, true], &[1, 1]), (vec![1, 1], false));
    let (s, changes) = gate_answered(&s, &a, t(20), Ok(()));
    assert_eq!(s.phase, Phase::Promoted);
    assert_eq!(changes[0].reason, "AnalysisPromoted");
    assert_eq!(traffic(&a, &s, &[true, true], &[1, 1]), (vec![1, 1], true));
    assert_eq!(
        traffic(&a, &s, &[true, false], &[1, 0]),
        (vec![1, 0], false)
    );
}

#[test]
fn canary_routes_matches_only_while_the_candidate_is_judged_or_promoted() {
    let a = analysis("strategy: canary\ninterval: 10s");
    let (s, _) = observe(None, &a, &facts(false), t(0));
    assert_eq!(traffic(&a, &s, &[true, true], &[1, 1]), (vec![1, 0], false));
    let (s, _) = observe(Some(&s), &a, &facts(true), t(1));
    assert_eq!(traffic(&a, &s, &[true, true], &[1, 1]), (vec![1, 1], false));
    let (s, _) = with(&s, &a, t(11), Outcome::Fail);
    assert_eq!(s.phase, Phase::RolledBack);
    assert_eq!(traffic(&a, &s, &[true, true], &[1, 1]), (vec![1, 0], false));
}

#[test]
fn dry_run_measures_but_routes_as_without_analysis() {
    let a = analysis("strategy: blue-green\nmode: dryRun\nsteps: [10]");
    let (s, _) = observe(None, &a, &facts(true), t(0));
    assert_eq!(traffic(&a, &s, &[true, true], &[3, 7]), (vec![3, 7], false));
    let (s, _) = with(&s, &a, t(60), Outcome::Fail);
    assert_eq!(
        s.phase,
        Phase::RolledBack,
        "the would-be decision is recorded"
    );
    assert_eq!(traffic(&a, &s, &[true, true], &[3, 7]), (vec![3, 7], false));
}

#[test]
fn traffic_always_has_somewhere_to_go() {
    let a = bg();
    let (s, _) = observe(None, &a, &facts(true), t(0));
    assert_eq!(traffic(&a, &s, &[false, true], &[0, 1]).0, vec![0, 10]);
    assert_eq!(traffic(&a, &s, &[false, false], &[1, 0]).0, vec![1, 0]);
}

#[test]
fn a_version_still_being_created_restarts_the_wait_quietly() {
    let a = bg();
    let creating = Facts {
        subject: vec!["p".into(), String::new()],
        candidate_ready: false,
        primary_ready: true,
    };
    let (s, _) = observe(None, &a, &creating, t(0));
    let (s, changes) = observe(Some(&s), &a, &facts(false), t(1));
    assert_eq!(
        (s.phase, s.subject.clone()),
        (Phase::Waiting, facts(false).subject)
    );
    assert!(changes.is_empty(), "{changes:?}");
}

#[test]
fn a_candidate_ready_before_the_primary_waits_for_it_without_a_deadline() {
    let a = bg();
    let early = Facts {
        subject: vec!["p".into(), "c".into()],
        candidate_ready: true,
        primary_ready: false,
    };
    let (s, changes) = observe(None, &a, &early, t(0));
    assert_eq!(s.phase, Phase::Waiting);
    assert!(changes.is_empty(), "{changes:?}");
    assert!(s.message.contains("primary"), "{}", s.message);
    // No traffic for it meanwhile: it would be the only destination.
    assert_eq!(traffic(&a, &s, &[false, true], &[100, 0]).0, vec![1, 0]);
    // Long past the readiness deadline: not the candidate's fault, so no rollback.
    let late = t(a.progress_deadline.as_secs() as i64 * 10);
    let (s, changes) = observe(Some(&s), &a, &early, late);
    assert_eq!(s.phase, Phase::Waiting, "{changes:?}");
    // The primary is ready: the ramp starts at its first step.
    let (s, _) = observe(Some(&s), &a, &facts(true), late);
    assert_eq!(s.phase, Phase::Progressing);
    assert_eq!(traffic(&a, &s, &[true, true], &[100, 0]).0, vec![90, 10]);
}
