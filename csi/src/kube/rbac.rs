//! What each cstor service account must be allowed, derived from the API
//! calls the code makes (each module keeps its own `CALLS` table next to
//! the code that makes them) and from what the pinned CSI sidecars
//! document ([`SIDECAR_NEEDS`]). A test compares the chart's Role and
//! ClusterRole rules with these lists both ways: a rule nobody needs fails
//! it, and so does a call without its rule.

/// Where a rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// The release namespace (a Role).
    Namespace,
    /// The whole cluster (a ClusterRole).
    Cluster,
}

/// One verb on one resource (a subresource as `resource/sub`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiCall {
    pub scope: Scope,
    /// API group, "" for the core group.
    pub group: &'static str,
    pub resource: &'static str,
    pub verb: &'static str,
}

impl ApiCall {
    pub const fn new(
        scope: Scope,
        group: &'static str,
        resource: &'static str,
        verb: &'static str,
    ) -> Self {
        ApiCall {
            scope,
            group,
            resource,
            verb,
        }
    }
}

const fn ns(group: &'static str, resource: &'static str, verb: &'static str) -> ApiCall {
    ApiCall::new(Scope::Namespace, group, resource, verb)
}

const fn cl(group: &'static str, resource: &'static str, verb: &'static str) -> ApiCall {
    ApiCall::new(Scope::Cluster, group, resource, verb)
}

/// What the CSI controller pod's sidecars need, as their own
/// `deploy/kubernetes/rbac.yaml` list it at the versions the chart pins
/// (external-provisioner v5.3.0, external-attacher v4.9.0,
/// external-resizer v1.14.0, external-snapshotter's csi-snapshotter v8.3.0;
/// livenessprobe needs nothing). Left out on purpose: Secrets (no
/// StorageClass or VolumeSnapshotClass of ours names a provisioner,
/// attacher or snapshotter secret), the provisioner's `update` of PVs (it
/// patches them since v5), the attacher's `update` of PVs and
/// VolumeAttachments (it patches them since v2), and the snapshotter's
/// group-snapshot rules and `create` of VolumeSnapshotContents (the
/// CSIVolumeGroupSnapshot feature gate, off in the chart).
pub const SIDECAR_NEEDS: &[ApiCall] = &[
    // provisioner: create/delete; provisioner, attacher, resizer: patch.
    cl("", "persistentvolumes", "get"),
    cl("", "persistentvolumes", "list"),
    cl("", "persistentvolumes", "watch"),
    cl("", "persistentvolumes", "create"),
    cl("", "persistentvolumes", "patch"),
    cl("", "persistentvolumes", "delete"),
    // provisioner (annotations and finalizers by update); resizer reads.
    cl("", "persistentvolumeclaims", "get"),
    cl("", "persistentvolumeclaims", "list"),
    cl("", "persistentvolumeclaims", "watch"),
    cl("", "persistentvolumeclaims", "update"),
    // resizer.
    cl("", "persistentvolumeclaims/status", "patch"),
    // all four.
    cl("", "events", "list"),
    cl("", "events", "watch"),
    cl("", "events", "create"),
    cl("", "events", "update"),
    cl("", "events", "patch"),
    // provisioner, attacher (topology); resizer (pods using a volume).
    cl("", "nodes", "get"),
    cl("", "nodes", "list"),
    cl("", "nodes", "watch"),
    cl("", "pods", "get"),
    cl("", "pods", "list"),
    cl("", "pods", "watch"),
    cl("storage.k8s.io", "storageclasses", "get"),
    cl("storage.k8s.io", "storageclasses", "list"),
    cl("storage.k8s.io", "storageclasses", "watch"),
    cl("storage.k8s.io", "csinodes", "get"),
    cl("storage.k8s.io", "csinodes", "list"),
    cl("storage.k8s.io", "csinodes", "watch"),
    cl("storage.k8s.io", "volumeattributesclasses", "get"),
    cl("storage.k8s.io", "volumeattributesclasses", "list"),
    cl("storage.k8s.io", "volumeattributesclasses", "watch"),
    // attacher: patch; provisioner: watch (a delete waits for detach).
    cl("storage.k8s.io", "volumeattachments", "get"),
    cl("storage.k8s.io", "volumeattachments", "list"),
    cl("storage.k8s.io", "volumeattachments", "watch"),
    cl("storage.k8s.io", "volumeattachments", "patch"),
    cl("storage.k8s.io", "volumeattachments/status", "patch"),
    cl("snapshot.storage.k8s.io", "volumesnapshotclasses", "get"),
    cl("snapshot.storage.k8s.io", "volumesnapshotclasses", "list"),
    cl("snapshot.storage.k8s.io", "volumesnapshotclasses", "watch"),
    // provisioner: a volume restored from a snapshot (read only).
    cl("snapshot.storage.k8s.io", "volumesnapshots", "get"),
    cl("snapshot.storage.k8s.io", "volumesnapshots", "list"),
    // snapshotter.
    cl("snapshot.storage.k8s.io", "volumesnapshotcontents", "get"),
    cl("snapshot.storage.k8s.io", "volumesnapshotcontents", "list"),
    cl("snapshot.storage.k8s.io", "volumesnapshotcontents", "watch"),
    cl(
        "snapshot.storage.k8s.io",
        "volumesnapshotcontents",
        "update",
    ),
    cl("snapshot.storage.k8s.io", "volumesnapshotcontents", "patch"),
    cl(
        "snapshot.storage.k8s.io",
        "volumesnapshotcontents/status",
        "update",
    ),
    cl(
        "snapshot.storage.k8s.io",
        "volumesnapshotcontents/status",
        "patch",
    ),
    // Leader election of all four (--leader-election).
    ns("coordination.k8s.io", "leases", "get"),
    ns("coordination.k8s.io", "leases", "list"),
    ns("coordination.k8s.io", "leases", "watch"),
    ns("coordination.k8s.io", "leases", "create"),
    ns("coordination.k8s.io", "leases", "update"),
    ns("coordination.k8s.io", "leases", "delete"),
];

/// Every call of the CSI controller's own code.
pub fn controller_calls() -> Vec<ApiCall> {
    let mut calls: Vec<ApiCall> = super::CALLS
        .iter()
        .chain(super::mirror::CALLS)
        .copied()
        .collect();
    calls.sort();
    calls.dedup();
    calls
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// One rule of a Role or ClusterRole, as written in the chart.
    #[derive(Debug, Default)]
    struct Rule {
        groups: Vec<String>,
        resources: Vec<String>,
        verbs: Vec<String>,
    }

    /// `[a, "b", c]` → a, b, c.
    fn flow_list(text: &str) -> Result<Vec<String>, String> {
        let inner = text
            .trim()
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .ok_or_else(|| format!("not a flow list: {text:?}"))?;
        Ok(inner
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_owned())
            .filter(|s| !s.is_empty() || inner.trim() == "\"\"")
            .collect())
    }

    /// The rules of the (Cluster)Role `name` in a rendered rbac.yaml, keyed
    /// by scope. The chart writes every rule as three flow-style lines
    /// (`- apiGroups: [...]`, `resources: [...]`, `verbs: [...]`); anything
    /// else under `rules:` is an error, so no rule escapes the check.
    fn rules(yaml: &str, name: &str) -> Result<Vec<(Scope, Rule)>, String> {
        let mut out = Vec::new();
        for doc in yaml.split("\n---") {
            let scope = if doc.contains("\nkind: ClusterRole\n") {
                Scope::Cluster
            } else if doc.contains("\nkind: Role\n") {
                Scope::Namespace
            } else {
                continue;
            };
            if !doc.contains(&format!("\n  name: {name}\n")) {
                continue;
            }
            let Some((_, body)) = doc.split_once("\nrules:\n") else {
                return Err(format!("{name}: no rules"));
            };
            let mut rule: Option<Rule> = None;
            for line in body.lines() {
                let t = line.trim();
                if t.is_empty() || t.starts_with('#') {
                    continue;
                }
                if let Some(rest) = t.strip_prefix("- apiGroups:") {
                    out.extend(rule.take().map(|r| (scope, r)));
                    rule = Some(Rule {
                        groups: flow_list(rest)?,
                        ..Rule::default()
                    });
                } else if let (Some(r), Some(rest)) = (rule.as_mut(), t.strip_prefix("resources:"))
                {
                    r.resources = flow_list(rest)?;
                } else if let (Some(r), Some(rest)) = (rule.as_mut(), t.strip_prefix("verbs:")) {
                    r.verbs = flow_list(rest)?;
                } else {
                    return Err(format!("{name}: rule line not understood: {t:?}"));
                }
            }
            out.extend(rule.take().map(|r| (scope, r)));
        }
        Ok(out)
    }

    type Granted = BTreeSet<(Scope, String, String, String)>;

    fn granted(yaml: &str, name: &str) -> Result<Granted, String> {
        let mut set = BTreeSet::new();
        for (scope, rule) in rules(yaml, name)? {
            for g in &rule.groups {
                for r in &rule.resources {
                    for v in &rule.verbs {
                        if g == "*" || r == "*" || v == "*" {
                            return Err(format!("{name}: wildcard in {rule:?}"));
                        }
                        set.insert((scope, g.clone(), r.clone(), v.clone()));
                    }
                }
            }
        }
        Ok(set)
    }

    fn needed(calls: &[ApiCall]) -> Granted {
        calls
            .iter()
            .map(|c| (c.scope, c.group.into(), c.resource.into(), c.verb.into()))
            .collect()
    }

    /// Both ways: what is granted and needed by nobody, what is needed and
    /// not granted.
    fn compare(granted: &Granted, needed: &Granted) -> Result<(), String> {
        let extra: Vec<_> = granted.difference(needed).collect();
        let missing: Vec<_> = needed.difference(granted).collect();
        if extra.is_empty() && missing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "granted but used by neither the code nor a sidecar: {extra:?}\n\
             used but not granted: {missing:?}"
        ))
    }

    fn rendered_rbac() -> String {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/rbac.yaml");
        std::fs::read_to_string(&path).unwrap()
    }

    #[test]
    fn the_controllers_rules_are_exactly_its_calls_and_its_sidecars_needs() {
        let mut calls = controller_calls();
        calls.extend_from_slice(SIDECAR_NEEDS);
        let yaml = rendered_rbac();
        compare(
            &granted(&yaml, "cstor-csi-controller").unwrap(),
            &needed(&calls),
        )
        .unwrap();
    }

    #[test]
    fn the_replica_pods_rules_are_exactly_the_pool_agents_calls() {
        let yaml = rendered_rbac();
        compare(
            &granted(&yaml, "cstor-replica").unwrap(),
            &needed(crate::kube::pool_agent::CALLS),
        )
        .unwrap();
    }

    #[test]
    fn the_controller_may_read_no_secret() {
        let yaml = rendered_rbac();
        let granted = granted(&yaml, "cstor-csi-controller").unwrap();
        for verb in ["get", "list", "watch"] {
            assert!(
                !granted
                    .iter()
                    .any(|(_, g, r, v)| g.is_empty() && r == "secrets" && v == verb),
                "{verb} secrets"
            );
        }
    }

    const CHART_LIKE: &str = "\
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: x
rules:
  # reads.
  - apiGroups: [\"\"]
    resources: [nodes, pods]
    verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: x
  namespace: n
rules:
  - apiGroups: [apps]
    resources: [deployments]
    verbs: [patch]
";

    #[test]
    fn a_rule_added_or_a_call_added_without_its_rule_fails_the_comparison() {
        let granted = granted(CHART_LIKE, "x").unwrap();
        assert_eq!(granted.len(), 5);
        let mut calls = vec![
            cl("", "nodes", "get"),
            cl("", "nodes", "list"),
            cl("", "pods", "get"),
            cl("", "pods", "list"),
            ns("apps", "deployments", "patch"),
        ];
        compare(&granted, &needed(&calls)).unwrap();
        // A call without its rule.
        calls.push(ns("apps", "deployments", "delete"));
        let e = compare(&granted, &needed(&calls)).unwrap_err();
        assert!(e.contains("\"deployments\", \"delete\""), "{e}");
        // A rule nobody needs.
        calls.truncate(4);
        let e = compare(&granted, &needed(&calls)).unwrap_err();
        assert!(e.contains("\"deployments\", \"patch\""), "{e}");
        // Block-style rules are refused rather than skipped.
        let block = CHART_LIKE.replace("verbs: [patch]", "verbs:\n      - patch");
        assert!(rules(&block, "x").is_err());
    }
}
