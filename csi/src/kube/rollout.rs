//! Whether a target Deployment's rollout is done, read from its status
//! alone (no IO), with the rules `kubectl rollout status` uses.
//!
//! Invariant: `Complete` only when the controller has seen the newest spec
//! (observedGeneration ≥ generation), every pod runs that spec, no old pod
//! is left, and the pod is available (ready for minReadySeconds). Anything
//! less is `Progressing` with a reason for the log; a Deployment whose
//! progress deadline passed is `Failed`, so callers stop waiting early.

use k8s_openapi::api::apps::v1::Deployment;

/// Where a Deployment's rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    Complete,
    Progressing(String),
    Failed(String),
}

/// The rollout state of `deployment`.
pub fn rollout(deployment: &Deployment) -> Rollout {
    let generation = deployment.metadata.generation.unwrap_or(0);
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1);
    let Some(status) = deployment.status.as_ref() else {
        return Rollout::Progressing("no status yet".into());
    };
    if let Some(failed) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return Rollout::Failed(failed.message.clone().unwrap_or_default());
    }
    if status.observed_generation.unwrap_or(0) < generation {
        return Rollout::Progressing("spec change not observed yet".into());
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < wanted {
        return Rollout::Progressing(format!("{updated} of {wanted} pods updated"));
    }
    if total > updated {
        return Rollout::Progressing(format!("{} old pods terminating", total - updated));
    }
    if available < updated {
        return Rollout::Progressing(format!("{available} of {updated} pods available"));
    }
    Rollout::Complete
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};

    fn deployment(generation: i64, status: Option<DeploymentStatus>) -> Deployment {
        let mut d = Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                ..DeploymentSpec::default()
            }),
            status,
            ..Deployment::default()
        };
        d.metadata.generation = Some(generation);
        d
    }

    fn status(observed: i64, total: i32, updated: i32, available: i32) -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: Some(observed),
            replicas: Some(total),
            updated_replicas: Some(updated),
            available_replicas: Some(available),
            ..DeploymentStatus::default()
        }
    }

    #[test]
    fn complete_only_when_the_new_pod_is_available_and_no_old_pod_is_left() {
        assert_eq!(
            rollout(&deployment(2, Some(status(2, 1, 1, 1)))),
            Rollout::Complete
        );
        for (what, s) in [
            ("no status", None),
            ("old generation", Some(status(1, 1, 1, 1))),
            ("not updated", Some(status(2, 1, 0, 1))),
            ("old pod left", Some(status(2, 2, 1, 1))),
            ("not available", Some(status(2, 1, 1, 0))),
        ] {
            assert!(
                matches!(rollout(&deployment(2, s)), Rollout::Progressing(_)),
                "{what}"
            );
        }
    }

    #[test]
    fn progress_deadline_exceeded_is_failed() {
        let mut s = status(1, 1, 1, 0);
        s.conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet has timed out progressing.".into()),
            ..DeploymentCondition::default()
        }]);
        assert_eq!(
            rollout(&deployment(1, Some(s))),
            Rollout::Failed("ReplicaSet has timed out progressing.".into())
        );
    }
}
