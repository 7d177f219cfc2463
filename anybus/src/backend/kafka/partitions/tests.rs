//! Unit tests of the partition table: commit points, generations, seeks, revokes, holds.

use super::*;

#[test]
fn commits_never_pass_an_unfinished_offset() {
    let mut t = PartitionTable::default();
    t.assign("t", 0);
    let r: Vec<Receipt> = (10..14).map(|o| t.track("t", 0, o).unwrap().0).collect();
    t.complete(&r[2]).unwrap();
    t.complete(&r[1]).unwrap();
    assert_eq!(t.take_commits(), vec![(Arc::from("t"), 0, 10)]);
    t.complete(&r[0]).unwrap();
    assert_eq!(t.take_commits(), vec![(Arc::from("t"), 0, 13)]);
    assert!(t.take_commits().is_empty(), "nothing moved");
}

#[test]
fn a_stale_receipt_after_reassignment_changes_nothing() {
    let mut t = PartitionTable::default();
    t.assign("t", 0);
    let old = t.track("t", 0, 0).unwrap().0;
    assert!(t.try_start(&old));
    t.begin_revoke("t", 0);
    assert_eq!(t.revoking_in_flight(), 1);
    assert_eq!(t.finish_revoke("t", 0), Some(0));
    t.assign("t", 0);
    assert!(!t.is_current(&old));
    assert_eq!(t.complete(&old), Err(()));
    let fresh = t.track("t", 0, 0).unwrap().0;
    assert!(t.is_current(&fresh));
    assert_ne!(fresh.generation(), old.generation());
}

#[test]
fn a_rewind_drops_reads_until_the_seek_took_effect() {
    let mut t = PartitionTable::default();
    t.assign("t", 0);
    let r: Vec<Receipt> = (0..3).map(|o| t.track("t", 0, o).unwrap().0).collect();
    t.complete(&r[0]).unwrap();
    t.rewind(&r[1]).unwrap();
    assert!(!t.is_current(&r[2]), "work read before the rewind is stale");
    assert!(t.track("t", 0, 3).is_none(), "prefetched before the seek");
    assert_eq!(
        t.take_seeks(),
        vec![Seek {
            topic: Arc::from("t"),
            partition: 0,
            offset: 1
        }]
    );
    assert!(t.track("t", 0, 0).is_none(), "before the seek target");
    let again = t.track("t", 0, 1).unwrap().0;
    assert_eq!(again.offset, 1);
    assert!(t.is_current(&again));
}

#[test]
fn assignment_lists_owned_partitions() {
    let mut t = PartitionTable::default();
    t.assign("b", 1);
    t.assign("a", 0);
    let names: Vec<(String, i32)> = t
        .assignment()
        .into_iter()
        .map(|tp| (tp.topic.to_string(), tp.partition))
        .collect();
    assert_eq!(names, [("a".into(), 0), ("b".into(), 1)]);
}

#[test]
fn a_revoke_gives_up_work_not_started_and_commits_below_it() {
    let mut t = PartitionTable::default();
    t.assign("t", 0);
    let r: Vec<Receipt> = (0..4).map(|o| t.track("t", 0, o).unwrap().0).collect();
    t.complete(&r[0]).unwrap();
    assert!(t.try_start(&r[1]), "started before the revoke");
    t.begin_revoke("t", 0);
    assert!(!t.try_start(&r[2]), "no new work on a revoking partition");
    assert!(t.is_current(&r[1]), "work running on it may still finish");
    assert_eq!(t.revoking_in_flight(), 1, "given up: no longer waited for");
    t.complete(&r[1]).unwrap();
    assert!(!t.try_start(&r[3]));
    assert_eq!(
        t.revoking_in_flight(),
        0,
        "the drain waits for nothing more"
    );
    assert_eq!(
        t.finish_revoke("t", 0),
        Some(2),
        "the next owner starts at the first given up"
    );
}

/// Deliveries tracked but not started (held by the poll thread, in the channel, or waiting in
/// the runtime) are given up when the revoke begins: the drain waits for running work only.
#[test]
fn a_revoke_waits_only_for_work_that_started() {
    let mut t = PartitionTable::default();
    t.assign("t", 0);
    let r: Vec<Receipt> = (0..5).map(|o| t.track("t", 0, o).unwrap().0).collect();
    assert!(t.try_start(&r[0]));
    assert!(t.try_start(&r[1]));
    t.complete(&r[0]).unwrap();
    t.begin_revoke("t", 0);
    assert_eq!(
        t.revoking_in_flight(),
        1,
        "only offset 1 runs; 2, 3 and 4 never reached a handler"
    );
    t.complete(&r[1]).unwrap();
    assert_eq!(t.revoking_in_flight(), 0);
    assert!(!t.try_start(&r[2]), "given up: it does not start later");
    assert_eq!(
        t.finish_revoke("t", 0),
        Some(2),
        "the next owner starts at 2"
    );
}

#[test]
fn a_commit_counts_only_once_the_broker_confirmed_it() {
    let mut t = PartitionTable::default();
    t.assign("t", 0);
    let r = t.track("t", 0, 0).unwrap().0;
    t.complete(&r).unwrap();
    assert_eq!(t.take_commits(), vec![(Arc::from("t"), 0, 1)]);
    assert!(t.take_commits().is_empty(), "the commit is on its way");
    assert_eq!(
        t.finish_revoke("t", 0),
        Some(1),
        "not confirmed: the revoke commits it"
    );

    t.assign("t", 0);
    let r = t.track("t", 0, 1).unwrap().0;
    t.complete(&r).unwrap();
    assert_eq!(t.take_commits(), vec![(Arc::from("t"), 0, 2)]);
    t.commit_answered("t", 0, 2, true);
    assert!(t.take_commits().is_empty());
    assert!(t.take_unconfirmed().is_empty());
    assert_eq!(
        t.finish_revoke("t", 0),
        None,
        "confirmed: nothing to commit"
    );
}

#[test]
fn a_failed_commit_is_taken_again() {
    let mut t = PartitionTable::default();
    t.assign("t", 0);
    let r: Vec<Receipt> = (0..2).map(|o| t.track("t", 0, o).unwrap().0).collect();
    t.complete(&r[0]).unwrap();
    assert_eq!(t.take_commits(), vec![(Arc::from("t"), 0, 1)]);
    t.complete(&r[1]).unwrap();
    assert_eq!(t.take_commits(), vec![(Arc::from("t"), 0, 2)]);
    t.commit_answered("t", 0, 1, false);
    assert!(
        t.take_commits().is_empty(),
        "the failure of an older commit: the newer one is still on its way"
    );
    t.commit_answered("t", 0, 2, false);
    assert_eq!(
        t.take_commits(),
        vec![(Arc::from("t"), 0, 2)],
        "the failed commit is taken again"
    );
    assert_eq!(
        t.take_unconfirmed(),
        vec![(Arc::from("t"), 0, 2)],
        "closing commits what is on its way too"
    );
    t.commit_answered("t", 0, 2, true);
    assert!(t.take_commits().is_empty());
}

#[test]
fn a_failed_seek_drops_reads_until_a_seek_succeeds() {
    let mut t = PartitionTable::default();
    t.assign("t", 0);
    let r: Vec<Receipt> = (0..3).map(|o| t.track("t", 0, o).unwrap().0).collect();
    t.complete(&r[0]).unwrap();
    t.rewind(&r[1]).unwrap();
    let seeks = t.take_seeks();
    assert_eq!(seeks.len(), 1);
    t.seek_failed(&seeks[0]);
    // librdkafka goes on from where it was: offsets 3 and 4 were never handled here.
    assert!(t.track("t", 0, 3).is_none(), "read after a failed seek");
    assert!(t.track("t", 0, 4).is_none(), "read after a failed seek");
    assert!(t.take_commits().is_empty(), "nothing commits past offset 1");
    assert_eq!(t.take_seeks(), seeks, "the seek is tried again");
    let again = t.track("t", 0, 1).unwrap().0;
    t.complete(&again).unwrap();
    assert_eq!(t.take_commits(), vec![(Arc::from("t"), 0, 2)]);
}

#[test]
fn a_held_partition_stays_held_across_a_reassignment_and_a_whole_pause() {
    let mut t = PartitionTable::default();
    t.assign("t", 0);
    t.assign("t", 1);
    let slot = t.track("t", 1, 0).unwrap().0.slot;
    assert_eq!(
        t.hold(slot),
        Some((Arc::from("t"), 1)),
        "owned: pause it now"
    );
    assert!(t.is_paused("t", 1));
    assert!(!t.is_paused("t", 0));
    t.begin_revoke("t", 1);
    t.finish_revoke("t", 1);
    assert_eq!(t.hold(slot), None, "not owned: nothing to pause now");
    t.assign("t", 1);
    assert!(t.is_paused("t", 1), "assigned again: still held");

    t.set_fetch_paused(true);
    assert!(t.is_paused("t", 0));
    assert_eq!(t.release(slot), None, "the whole assignment stays paused");
    t.set_fetch_paused(false);
    assert!(!t.is_paused("t", 1), "released while the whole was paused");

    assert_eq!(t.hold(slot), Some((Arc::from("t"), 1)));
    assert_eq!(t.release(slot), Some((Arc::from("t"), 1)), "resume it now");
    assert_eq!(t.release(slot), None, "not held: nothing to resume");
    assert_eq!(t.hold(99), None, "a slot never met");
}
