//! The Redis Cluster's shard count as a step-by-step process: which node count the StatefulSet has
//! and which data-plane Job runs, decided from the spec, the progress recorded in status and what
//! the StatefulSet and the Job report. Pure; the reconciler applies the result and records
//! [`ShardPlan::shards`] and [`ShardPlan::change`], so a restarted operator resumes at the recorded step.
//!
//! ```text
//! first:  ScaleNodes(0→T) ─nodes ready─▶ Bootstrap job ─complete─▶ shards = T
//! grow:   ScaleNodes(S→T) ─nodes ready─▶ MoveSlots job (add-shards) ─complete─▶ shards = T
//! shrink: MoveSlots job (drain-shards) ─complete─▶ ShrinkNodes(S→T) ─nodes gone─▶ shards = T
//! ```

use crate::crd::{ShardChange, ShardStep};

/// The data-plane action of a Job (`redis-cluster.sh <action>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardAction {
    /// Create the cluster over every node.
    Bootstrap,
    /// Join new masters and replicas and move slots onto the new masters.
    AddShards,
    /// Move slots off the masters above the target, then forget them.
    DrainShards,
}

impl ShardAction {
    /// The script's subcommand.
    pub fn as_str(self) -> &'static str {
        match self {
            ShardAction::Bootstrap => "bootstrap",
            ShardAction::AddShards => "add-shards",
            ShardAction::DrainShards => "drain-shards",
        }
    }
}

/// A Job to run: the action, the shard count it aims for, and the nodes (as shards) it addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardJob {
    /// What the script does.
    pub action: ShardAction,
    /// `REDIS_SHARDS`: the shard count after the job.
    pub target: i32,
    /// `REDIS_NODES` lists the nodes of this many shards.
    pub node_shards: i32,
}

/// What the Job of the current step reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Not there (not yet created, or removed after it finished).
    Absent,
    /// Created, not finished.
    Running,
    /// Finished successfully.
    Complete,
    /// Gave up after its retries.
    Failed,
}

/// What the StatefulSet and the step's Job report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// `status.readyReplicas` of the Redis StatefulSet.
    pub ready_nodes: i32,
    /// `status.replicas` of the Redis StatefulSet (pods that exist).
    pub nodes: i32,
    /// The step's Job.
    pub job: JobState,
}

/// The decision for one reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    /// The StatefulSet holds this many shards' worth of nodes.
    pub node_shards: i32,
    /// The Job that must exist now, if any.
    pub job: Option<ShardJob>,
    /// The Job of a finished step, to delete.
    pub finished_job: Option<ShardJob>,
    /// Shards holding slots, to record in status.
    pub shards: Option<i32>,
    /// The change in progress, to record in status.
    pub change: Option<ShardChange>,
    /// The step's Job failed (reported in conditions and Events; it is retried).
    pub failed: bool,
}

/// Decides the next step from the spec's `shards`, the recorded `shards` and `change`, the nodes
/// per shard and what is observed.
pub fn plan(
    spec_shards: i32,
    shards: Option<i32>,
    change: Option<&ShardChange>,
    nodes_per_shard: i32,
    observed: Observed,
) -> ShardPlan {
    let change = match (change, shards) {
        (Some(change), _) => change.clone(),
        (None, Some(current)) if current == spec_shards => return settled(current),
        (None, current) => start(current.unwrap_or(0), spec_shards),
    };
    advance(change, nodes_per_shard, observed)
}

fn settled(shards: i32) -> ShardPlan {
    ShardPlan {
        node_shards: shards,
        job: None,
        finished_job: None,
        shards: Some(shards),
        change: None,
        failed: false,
    }
}

fn start(from: i32, to: i32) -> ShardChange {
    let step = if to > from {
        ShardStep::ScaleNodes
    } else {
        ShardStep::MoveSlots
    };
    ShardChange { from, to, step }
}

/// The Job of a change's slot-moving step (bootstrap, add or drain).
pub fn job_of(change: &ShardChange) -> ShardJob {
    if change.from == 0 {
        ShardJob {
            action: ShardAction::Bootstrap,
            target: change.to,
            node_shards: change.to,
        }
    } else if change.to > change.from {
        ShardJob {
            action: ShardAction::AddShards,
            target: change.to,
            node_shards: change.to,
        }
    } else {
        ShardJob {
            action: ShardAction::DrainShards,
            target: change.to,
            node_shards: change.from,
        }
    }
}

fn advance(change: ShardChange, nodes_per_shard: i32, observed: Observed) -> ShardPlan {
    let recorded = (change.from > 0).then_some(change.from);
    let in_progress = |change: ShardChange, node_shards, job, finished_job, failed| ShardPlan {
        node_shards,
        job,
        finished_job,
        shards: recorded,
        change: Some(change),
        failed,
    };
    let job = job_of(&change);
    match change.step {
        ShardStep::ScaleNodes => {
            let want = change.to * nodes_per_shard;
            if observed.ready_nodes >= want && observed.nodes == want {
                let step = if change.from == 0 {
                    ShardStep::Bootstrap
                } else {
                    ShardStep::MoveSlots
                };
                in_progress(
                    ShardChange { step, ..change },
                    change.to,
                    Some(job),
                    None,
                    false,
                )
            } else {
                in_progress(change.clone(), change.to, None, None, false)
            }
        }
        ShardStep::Bootstrap | ShardStep::MoveSlots => match observed.job {
            JobState::Complete if change.to > change.from => ShardPlan {
                finished_job: Some(job),
                ..settled(change.to)
            },
            JobState::Complete => {
                let next = ShardChange {
                    step: ShardStep::ShrinkNodes,
                    ..change.clone()
                };
                in_progress(next, change.to, None, Some(job), false)
            }
            JobState::Failed => in_progress(change.clone(), job.node_shards, None, Some(job), true),
            JobState::Absent | JobState::Running => {
                in_progress(change.clone(), job.node_shards, Some(job), None, false)
            }
        },
        ShardStep::ShrinkNodes => {
            if observed.nodes == change.to * nodes_per_shard {
                settled(change.to)
            } else {
                in_progress(change.clone(), change.to, None, None, false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(ready: i32, nodes: i32, job: JobState) -> Observed {
        Observed {
            ready_nodes: ready,
            nodes,
            job,
        }
    }

    #[test]
    fn a_new_cluster_scales_its_nodes_then_bootstraps_then_settles() {
        let p = plan(3, None, None, 2, seen(0, 0, JobState::Absent));
        assert_eq!(p.node_shards, 3);
        assert_eq!(p.job, None);
        let change = p.change.unwrap();
        assert_eq!(change.step, ShardStep::ScaleNodes);

        let p = plan(3, None, Some(&change), 2, seen(6, 6, JobState::Absent));
        let change = p.change.clone().unwrap();
        assert_eq!(change.step, ShardStep::Bootstrap);
        assert_eq!(p.job.unwrap().action, ShardAction::Bootstrap);

        let p = plan(3, None, Some(&change), 2, seen(6, 6, JobState::Running));
        assert_eq!(p.job.unwrap().action, ShardAction::Bootstrap);
        assert_eq!(p.shards, None);

        let p = plan(3, None, Some(&change), 2, seen(6, 6, JobState::Complete));
        assert_eq!(p.shards, Some(3));
        assert_eq!(p.change, None);
        assert_eq!(p.job, None);
        assert_eq!(p.finished_job.unwrap().action, ShardAction::Bootstrap);
    }

    #[test]
    fn growing_adds_nodes_before_moving_slots() {
        let p = plan(4, Some(3), None, 2, seen(6, 6, JobState::Absent));
        assert_eq!(p.node_shards, 4);
        assert_eq!(p.shards, Some(3));
        let change = p.change.unwrap();
        assert_eq!(
            (change.from, change.to, change.step),
            (3, 4, ShardStep::ScaleNodes)
        );

        let p = plan(4, Some(3), Some(&change), 2, seen(7, 8, JobState::Absent));
        assert_eq!(p.change.as_ref().unwrap().step, ShardStep::ScaleNodes);

        let p = plan(4, Some(3), Some(&change), 2, seen(8, 8, JobState::Absent));
        let change = p.change.unwrap();
        assert_eq!(change.step, ShardStep::MoveSlots);
        let job = p.job.unwrap();
        assert_eq!(
            (job.action, job.target, job.node_shards),
            (ShardAction::AddShards, 4, 4)
        );

        let p = plan(4, Some(3), Some(&change), 2, seen(8, 8, JobState::Complete));
        assert_eq!((p.shards, p.change), (Some(4), None));
    }

    #[test]
    fn shrinking_drains_slots_before_removing_nodes() {
        let p = plan(3, Some(4), None, 2, seen(8, 8, JobState::Absent));
        let change = p.change.unwrap();
        assert_eq!(change.step, ShardStep::MoveSlots);
        assert_eq!(p.node_shards, 4, "nodes stay until their slots are gone");
        let job = p.job.unwrap();
        assert_eq!(
            (job.action, job.target, job.node_shards),
            (ShardAction::DrainShards, 3, 4)
        );

        let p = plan(3, Some(4), Some(&change), 2, seen(8, 8, JobState::Complete));
        let change = p.change.unwrap();
        assert_eq!(change.step, ShardStep::ShrinkNodes);
        assert_eq!(p.node_shards, 3);
        assert!(p.finished_job.is_some());

        let p = plan(3, Some(4), Some(&change), 2, seen(6, 7, JobState::Absent));
        assert_eq!(p.change.unwrap().step, ShardStep::ShrinkNodes);
        let p = plan(3, Some(4), Some(&change), 2, seen(6, 6, JobState::Absent));
        assert_eq!((p.shards, p.change), (Some(3), None));
    }

    #[test]
    fn a_recorded_change_finishes_before_a_newer_spec_is_considered() {
        let change = ShardChange {
            from: 3,
            to: 4,
            step: ShardStep::MoveSlots,
        };
        let p = plan(5, Some(3), Some(&change), 1, seen(4, 4, JobState::Running));
        assert_eq!(p.job.unwrap().target, 4);
        let p = plan(5, Some(3), Some(&change), 1, seen(4, 4, JobState::Complete));
        assert_eq!(p.shards, Some(4));
        let p = plan(5, p.shards, None, 1, seen(4, 4, JobState::Absent));
        assert_eq!(p.change.unwrap().to, 5);
    }

    #[test]
    fn a_failed_job_is_reported_and_removed_for_a_retry() {
        let change = ShardChange {
            from: 0,
            to: 3,
            step: ShardStep::Bootstrap,
        };
        let p = plan(3, None, Some(&change), 1, seen(3, 3, JobState::Failed));
        assert!(p.failed);
        assert!(p.job.is_none());
        assert!(p.finished_job.is_some());
        assert_eq!(p.change, Some(change));
    }

    #[test]
    fn a_settled_cluster_does_nothing() {
        let p = plan(3, Some(3), None, 2, seen(6, 6, JobState::Absent));
        assert_eq!(p, settled(3));
    }
}
