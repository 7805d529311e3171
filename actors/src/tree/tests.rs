#![allow(clippy::unwrap_used)]

use super::*;
use crate::model::{ChatId, Role};
use std::sync::Arc;

struct Fixture {
    chat: ChatId,
    tree: Tree,
    main: BranchId,
}

fn branch(chat: ChatId, name: &str, head: Option<MessageId>) -> Branch {
    Branch {
        id: BranchId::new(),
        chat_id: chat,
        name: name.into(),
        head,
        forked_from: None,
        created_at: crate::model::now(),
        updated_at: crate::model::now(),
        fallback: None,
    }
}

fn msg(chat: ChatId, parent: Option<MessageId>, text: &str) -> Message {
    let (id, created_at) = MessageId::new_with_time();
    Message {
        id,
        chat_id: chat,
        parent_id: parent,
        role: Role::User,
        content: Arc::from(text),
        created_at,
        model: None,
        metadata: None,
        idempotency_key: None,
    }
}

fn fixture() -> Fixture {
    let chat = ChatId::new();
    let main = branch(chat, "main", None);
    let id = main.id;
    Fixture {
        chat,
        tree: Tree::new(main),
        main: id,
    }
}

impl Fixture {
    fn push(&mut self, branch: BranchId, text: &str) -> MessageId {
        let head = self.tree.head(branch).unwrap();
        let m = msg(self.chat, head, text);
        let id = m.id;
        self.tree.append(branch, m).unwrap();
        id
    }

    fn texts(&self, branch: BranchId) -> Vec<String> {
        self.tree
            .path(branch)
            .unwrap()
            .iter()
            .map(|m| self.tree.content(m).to_string())
            .collect()
    }

    fn fork_at(&mut self, head: MessageId) -> BranchId {
        let b = branch(self.chat, "fork", Some(head));
        let id = b.id;
        self.tree.add_branch(b).unwrap();
        id
    }
}

#[test]
fn jump_pointers_reach_every_ancestor_on_long_forked_paths() {
    let mut f = fixture();
    let mut main_path = Vec::new();
    for i in 0..300 {
        main_path.push(f.push(f.main, &i.to_string()));
    }
    // A side branch from the middle, grown deep, and a restored copy of the whole tree.
    let side = f.fork_at(main_path[137]);
    let mut side_path = main_path[..138].to_vec();
    for i in 0..200 {
        side_path.push(f.push(side, &format!("s{i}")));
    }
    let messages: Vec<Message> = f.tree.nodes().map(|n| f.tree.message(n)).collect();
    let branches = f.tree.branch_rows();
    let restored = Tree::restore(branches, f.main, messages).unwrap().tree;
    for tree in [&f.tree, &restored] {
        for (branch, path) in [(f.main, &main_path), (side, &side_path)] {
            for (index, want) in path.iter().enumerate() {
                assert_eq!(
                    tree.at_index(branch, index).unwrap(),
                    *want,
                    "index {index}"
                );
            }
        }
        // On-path checks through the cursor of a page.
        let page = tree.page(side, 5, Some(main_path[100])).unwrap();
        assert_eq!(page.nodes.last().unwrap().id(), main_path[99]);
        assert_eq!(
            tree.page(side, 5, Some(main_path[200])).unwrap_err(),
            TreeError::CursorNotOnPath
        );
    }
}

/// Every resident message pays for a node: a field added here is a cost to every chat.
#[test]
fn a_node_stays_36_bytes() {
    assert_eq!(std::mem::size_of::<Node>(), 36);
}

/// A chat's one branch and its `ThinVec` header fit mimalloc's 112-byte class.
#[test]
fn a_branch_stays_within_its_size_class() {
    assert!(std::mem::size_of::<BranchRef>() + 16 <= 112);
}

/// A message's creation time is its id's unless it was made apart from it; then the tree
/// keeps it aside, to the microsecond.
#[test]
fn creation_times_come_from_ids_or_are_kept_aside() {
    let mut f = fixture();
    let own = msg(f.chat, None, "made here");
    let mut imported = msg(f.chat, Some(own.id), "made elsewhere");
    imported.created_at = DateTime::from_timestamp_micros(978_307_200_123_456).unwrap();
    let mut foreign = msg(f.chat, Some(imported.id), "not a v7 id");
    foreign.id = MessageId::from_uuid(uuid::Uuid::from_u128(u128::MAX / 2 + 12_345));
    for m in [&own, &imported, &foreign] {
        f.tree.append(f.main, m.clone()).unwrap();
    }
    assert_eq!(own.id.timestamp(), Some(own.created_at));
    assert_eq!(foreign.id.timestamp(), None);
    for m in [&own, &imported, &foreign] {
        assert_eq!(f.tree.created_at(f.tree.node(m.id).unwrap()), m.created_at);
    }
    let aside = f.tree.rare.as_ref().map(|r| r.created.len());
    assert_eq!(aside, Some(2), "only the two made apart from their ids");
}

#[test]
fn the_packed_fields_round_trip() {
    for role in [Role::User, Role::Assistant, Role::System] {
        for depth in [0, 1, DEPTH_MASK] {
            for extra in [false, true] {
                let tag = Node::tag_of(depth, role, extra);
                let mut n = Node::new(MessageId::new(), 0, NIL, 5, tag);
                assert_eq!((n.depth(), n.role(), n.has_extra()), (depth, role, extra));
                n.set_link(FIRST_CHILD, NIL - 1);
                n.set_link(JUMP, 0);
                assert_eq!((n.depth(), n.role(), n.has_extra()), (depth, role, extra));
                let links = (n.parent(), n.jump(), n.first_child(), n.next_sibling());
                assert_eq!(links, (NIL, 0, NIL - 1, NIL));
            }
        }
    }
}

/// A node handed to another tree (a clone that has since changed, or an unrelated one) reads
/// that tree's content for its id, or nothing; it never slices out of bounds.
#[test]
fn content_of_a_node_from_another_tree_is_looked_up_by_id() {
    let mut f = fixture();
    let a = f.push(f.main, "first message");
    let b = f.push(f.main, "second");
    let copy = f.tree.clone();
    let mut other = fixture();
    other.push(other.main, "x");
    let foreign = copy.node(b).unwrap();
    assert_eq!(f.tree.content(foreign), "second");
    assert_eq!(other.tree.content(foreign), "");
    assert_eq!(other.tree.content(copy.node(a).unwrap()), "");
}

/// Lookups by id, while the nodes are in id order and once they are not (a message with an
/// older id attached last, as from a store).
#[test]
fn messages_are_found_by_id_in_and_out_of_id_order() {
    let mut f = fixture();
    let early = msg(f.chat, None, "made first, attached last");
    let a = f.push(f.main, "a");
    let b = f.push(f.main, "b");
    let between = MessageId::new();
    let c = f.push(f.main, "c");
    let check = |tree: &Tree, known: &[MessageId]| {
        for &id in known {
            assert_eq!(tree.message(tree.node(id).unwrap()).id, id);
        }
        assert!(tree.node(between).is_err());
        assert!(tree.node(MessageId::new()).is_err());
        for &taken in known {
            let mut again = msg(tree.chat(), None, "again");
            again.id = taken;
            assert_eq!(tree.clone().attach(again), Err(TreeError::Duplicate));
        }
    };
    check(&f.tree, &[a, b, c]);
    f.tree.attach(early.clone()).unwrap();
    check(&f.tree, &[early.id, a, b, c]);
    let d = f.push(f.main, "d");
    check(&f.tree, &[early.id, a, b, c, d]);
    assert_eq!(f.texts(f.main), ["a", "b", "c", "d"]);
}

/// What is computed from one state of a tree (the read path's cached pages) is kept while
/// the revision stays: so every change must take a new one, unique among all trees, and
/// reading must not.
#[test]
fn every_change_takes_a_new_revision_and_reads_keep_it() {
    let mut f = fixture();
    let other = fixture();
    let mut seen = vec![other.tree.revision()];
    let mut changed = |tree: &Tree, what: &str| {
        assert!(!seen.contains(&tree.revision()), "{what} kept a revision");
        seen.push(tree.revision());
    };
    changed(&f.tree, "new");
    let a = f.push(f.main, "a");
    changed(&f.tree, "append");
    let b = f.push(f.main, "b");
    changed(&f.tree, "append");
    let fork = f.fork_at(a);
    changed(&f.tree, "add_branch");
    f.tree.set_active(fork).unwrap();
    changed(&f.tree, "set_active");
    f.tree
        .rename_branch(fork, "renamed".into(), crate::model::now())
        .unwrap();
    changed(&f.tree, "rename_branch");
    f.tree.set_head(fork, b, crate::model::now()).unwrap();
    changed(&f.tree, "set_head");
    let edited = branch(f.chat, "edit", None);
    f.tree.edit(b, msg(f.chat, Some(a), "b2"), edited).unwrap();
    changed(&f.tree, "edit");
    f.tree.attach(msg(f.chat, Some(a), "loose")).unwrap();
    changed(&f.tree, "attach");
    f.tree.delete_branch(fork).unwrap();
    changed(&f.tree, "delete_branch");
    assert!(f.tree.set_active(BranchId::new()).is_err());
    changed(&f.tree, "a failed change");

    let before = f.tree.revision();
    let _ = f.tree.page(f.main, 20, None).unwrap();
    let _ = f.tree.path(f.main).unwrap();
    let _ = f.tree.clone();
    assert_eq!(f.tree.revision(), before, "reads change nothing");
    let restored = Tree::restore(vec![branch(f.chat, "main", None)], f.main, vec![]).unwrap();
    changed(&restored.tree, "restore");
}

#[test]
fn new_chat_has_one_empty_active_branch() {
    let f = fixture();
    assert_eq!(f.tree.active(), f.main);
    assert_eq!(f.tree.branches().len(), 1);
    assert_eq!(f.tree.path_len(f.main).unwrap(), 0);
    assert!(f.tree.path(f.main).unwrap().is_empty());
}

#[test]
fn approx_bytes_follows_content_in_and_out() {
    let mut f = fixture();
    let empty = f.tree.approx_bytes();
    let a = f.push(f.main, "short");
    let fork = f.fork_at(a);
    let big = "x".repeat(10_000);
    f.push(fork, &big);
    let with_big = f.tree.approx_bytes();
    assert!(with_big >= empty + 10_005, "{with_big} < {empty} + 10005");
    f.tree.delete_branch(fork).unwrap();
    let after = f.tree.approx_bytes();
    assert!(
        after < with_big - 9_000,
        "deleting the branch freed its message: {after}"
    );
    let restored = Tree::restore(
        f.tree.branch_rows(),
        f.main,
        f.tree.nodes().map(|n| f.tree.message(n)).collect(),
    )
    .unwrap()
    .tree;
    assert_eq!(restored.content_bytes(), f.tree.content_bytes());
}

#[test]
fn recent_path_keeps_the_newest_messages_within_budget() {
    let mut f = fixture();
    f.push(f.main, "aaaa");
    let b = f.push(f.main, "bbbb");
    let fork = f.fork_at(b);
    f.push(f.main, "other branch");
    let c = f.push(fork, "cc");
    let d = f.push(fork, "dddddddddd");
    let texts = |budget| {
        f.tree
            .recent_path(d, budget)
            .unwrap()
            .iter()
            .map(|m| f.tree.content(m).to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(usize::MAX), ["aaaa", "bbbb", "cc", "dddddddddd"]);
    assert_eq!(texts(16), ["bbbb", "cc", "dddddddddd"]);
    assert_eq!(texts(15), ["cc", "dddddddddd"]);
    // The last message is kept even when it alone is over budget.
    assert_eq!(texts(3), ["dddddddddd"]);
    assert_eq!(f.tree.recent_path(c, 0).unwrap().len(), 1);
}

#[test]
fn append_moves_head_and_builds_path() {
    let mut f = fixture();
    let a = f.push(f.main, "a");
    let b = f.push(f.main, "b");
    assert_eq!(f.tree.head(f.main).unwrap(), Some(b));
    assert_eq!(f.tree.parent_id(f.tree.node(b).unwrap()), Some(a));
    assert_eq!(f.texts(f.main), ["a", "b"]);
    assert_eq!(f.tree.node(b).unwrap().depth(), 1);
}

#[test]
fn append_refuses_a_message_not_at_head() {
    let mut f = fixture();
    let a = f.push(f.main, "a");
    f.push(f.main, "b");
    let stale = msg(f.chat, Some(a), "stale");
    assert_eq!(f.tree.append(f.main, stale), Err(TreeError::NotAtHead));
    assert_eq!(f.tree.message_count(), 2);
}

#[test]
fn fork_shares_history_without_copying() {
    let mut f = fixture();
    let a = f.push(f.main, "a");
    f.push(f.main, "b");
    let fork = f.fork_at(a);
    f.push(fork, "c");
    assert_eq!(f.texts(f.main), ["a", "b"]);
    assert_eq!(f.texts(fork), ["a", "c"]);
    assert_eq!(f.tree.message_count(), 3);
    // b and c are siblings under a.
    let c = f.tree.head(fork).unwrap().unwrap();
    assert_eq!(f.tree.sibling_position(c).unwrap(), (1, 2));
}

#[test]
fn fork_by_index_resolves_path_positions() {
    let mut f = fixture();
    let ids: Vec<_> = (0..5).map(|i| f.push(f.main, &i.to_string())).collect();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(f.tree.at_index(f.main, i).unwrap(), *id);
    }
    assert_eq!(
        f.tree.at_index(f.main, 5),
        Err(TreeError::IndexOutOfRange { index: 5, len: 5 })
    );
}

#[test]
fn fork_of_unknown_message_is_refused() {
    let mut f = fixture();
    let b = branch(f.chat, "x", Some(MessageId::new()));
    assert!(matches!(
        f.tree.add_branch(b),
        Err(TreeError::MessageNotFound(_))
    ));
    assert_eq!(f.tree.branches().len(), 1);
}

#[test]
fn edit_makes_a_sibling_on_a_new_branch() {
    let mut f = fixture();
    let a = f.push(f.main, "a");
    let b = f.push(f.main, "b");
    let replacement = msg(f.chat, Some(a), "b2");
    let rid = replacement.id;
    let nb = branch(f.chat, "edit", None);
    let nbid = nb.id;
    f.tree.edit(b, replacement, nb).unwrap();
    assert_eq!(f.texts(nbid), ["a", "b2"]);
    assert_eq!(f.texts(f.main), ["a", "b"]);
    assert_eq!(f.tree.sibling_position(b).unwrap(), (0, 2));
    assert_eq!(f.tree.sibling_position(rid).unwrap(), (1, 2));
    assert_eq!(f.tree.branch(nbid).unwrap().forked_from, Some(b));
}

#[test]
fn editing_a_root_makes_a_second_root() {
    let mut f = fixture();
    let a = f.push(f.main, "a");
    let nb = branch(f.chat, "edit", None);
    f.tree.edit(a, msg(f.chat, None, "a2"), nb).unwrap();
    assert_eq!(f.tree.sibling_position(a).unwrap(), (0, 2));
}

#[test]
fn delete_branch_prunes_only_what_it_alone_reached() {
    let mut f = fixture();
    let a = f.push(f.main, "a");
    let b = f.push(f.main, "b");
    let fork = f.fork_at(a);
    let c = f.push(fork, "c");
    let d = f.push(fork, "d");
    let mut removed = f.tree.delete_branch(fork).unwrap();
    removed.sort();
    let mut expected = vec![c, d];
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(f.tree.message_count(), 2);
    let a = f.tree.node(a).unwrap();
    let children: Vec<_> = f.tree.children(a).iter().map(|n| n.id()).collect();
    assert_eq!(children, [b]);
    assert_eq!(f.texts(f.main), ["a", "b"]);
}

#[test]
fn delete_branch_keeps_shared_messages() {
    let mut f = fixture();
    let a = f.push(f.main, "a");
    let fork = f.fork_at(a);
    assert!(f.tree.delete_branch(fork).unwrap().is_empty());
    assert_eq!(f.tree.message_count(), 1);
}

#[test]
fn deleting_the_last_branch_is_refused() {
    let mut f = fixture();
    f.push(f.main, "a");
    assert_eq!(f.tree.delete_branch(f.main), Err(TreeError::LastBranch));
    assert_eq!(f.tree.message_count(), 1);
}

#[test]
fn deleting_the_active_branch_activates_another() {
    let mut f = fixture();
    let a = f.push(f.main, "a");
    let fork = f.fork_at(a);
    f.tree.set_active(fork).unwrap();
    f.tree.delete_branch(fork).unwrap();
    assert_eq!(f.tree.active(), f.main);
}

#[test]
fn pages_walk_back_from_the_head() {
    let mut f = fixture();
    let ids: Vec<_> = (0..7).map(|i| f.push(f.main, &i.to_string())).collect();
    let p1 = f.tree.page(f.main, 3, None).unwrap();
    let got: Vec<_> = p1.nodes.iter().map(|n| n.id()).collect();
    assert_eq!(got, ids[4..7]);
    assert!(p1.has_more);
    assert_eq!(p1.path_len, 7);
    let p2 = f.tree.page(f.main, 3, Some(ids[4])).unwrap();
    let got: Vec<_> = p2.nodes.iter().map(|n| n.id()).collect();
    assert_eq!(got, ids[1..4]);
    let p3 = f.tree.page(f.main, 3, Some(ids[1])).unwrap();
    assert_eq!(p3.nodes.len(), 1);
    assert!(!p3.has_more);
}

#[test]
fn a_cursor_from_another_branch_is_refused() {
    let mut f = fixture();
    let a = f.push(f.main, "a");
    f.push(f.main, "b");
    let fork = f.fork_at(a);
    let c = f.push(fork, "c");
    assert!(matches!(
        f.tree.page(f.main, 10, Some(c)),
        Err(TreeError::CursorNotOnPath)
    ));
}

#[test]
fn restore_rebuilds_the_same_tree_and_repairs_damage() {
    let mut f = fixture();
    let a = f.push(f.main, "a");
    f.push(f.main, "b");
    let fork = f.fork_at(a);
    f.push(fork, "c");
    f.tree.set_active(fork).unwrap();

    let mut messages: Vec<Message> = f.tree.nodes().map(|n| f.tree.message(n)).collect();
    // A message no branch reaches (a crash after the message store, before the metadata).
    messages.push(msg(f.chat, Some(a), "stray"));
    // An orphan whose parent never landed.
    messages.push(msg(f.chat, Some(MessageId::new()), "orphan"));
    messages.reverse();
    let restored = Tree::restore(f.tree.branch_rows(), f.tree.active(), messages).unwrap();
    assert_eq!(restored.pruned.len(), 2);
    let t = restored.tree;
    assert_eq!(t.active(), fork);
    assert_eq!(t.message_count(), 3);
    for b in [f.main, fork] {
        let want: Vec<_> = f
            .tree
            .path(b)
            .unwrap()
            .into_iter()
            .map(|n| f.tree.message(n))
            .collect();
        let got: Vec<_> = t
            .path(b)
            .unwrap()
            .into_iter()
            .map(|n| t.message(n))
            .collect();
        assert_eq!(got, want);
    }
}

/// Ids made out of creation order (another process's clock, a restore that had to defer a
/// child) move the tree onto its sorted index; lookups, sibling order and pruning hold.
#[test]
fn ids_out_of_creation_order_keep_lookups_sibling_order_and_pruning() {
    let mut f = fixture();
    let root = f.push(f.main, "root");
    let ids: Vec<MessageId> = (0..6).map(|_| MessageId::new()).collect();
    // Siblings under `root`, attached in a scrambled order, each on its own branch.
    let mut branches = Vec::new();
    for &i in &[3usize, 0, 5, 1, 4, 2] {
        let mut m = msg(f.chat, Some(root), &format!("s{i}"));
        m.id = ids[i];
        f.tree.attach(m).unwrap();
        branches.push((i, f.fork_at(ids[i])));
    }
    let root_node = f.tree.node(root).unwrap();
    let children: Vec<_> = f.tree.children(root_node).iter().map(|n| n.id()).collect();
    assert_eq!(children, ids);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(f.tree.node(*id).unwrap().id(), *id);
        assert_eq!(f.tree.sibling_position(*id).unwrap(), (i, 6));
    }
    let all: Vec<_> = f.tree.nodes().map(|n| n.id()).collect();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    // Dropping the branches of s0, s3 and s4 prunes exactly those, and the rest still links.
    for (i, b) in &branches {
        if [0, 3, 4].contains(i) {
            assert_eq!(f.tree.delete_branch(*b).unwrap(), [ids[*i]]);
        }
    }
    let root_node = f.tree.node(root).unwrap();
    let children: Vec<_> = f.tree.children(root_node).iter().map(|n| n.id()).collect();
    assert_eq!(children, [ids[1], ids[2], ids[5]]);
    for (i, b) in &branches {
        if ![0, 3, 4].contains(i) {
            assert_eq!(f.texts(*b), ["root".to_string(), format!("s{i}")]);
            assert_eq!(f.tree.at_index(*b, 1).unwrap(), ids[*i]);
        }
    }
    assert_eq!(f.tree.sibling_position(ids[5]).unwrap(), (2, 3));
    assert!(f.tree.node(ids[0]).is_err());
}

#[test]
fn pruning_keeps_every_survivors_content_and_extras() {
    let mut f = fixture();
    let mut kept = Vec::new();
    let mut doomed = Vec::new();
    // Every other message carries a model, metadata and a key, every third a creation time
    // its id does not carry; contents differ in length.
    let with_extras = |mut m: Message, i: usize| {
        if i % 2 == 0 {
            m.model = Some(Arc::from(format!("model-{i}")));
            m.metadata = Some(Arc::new(serde_json::json!({ "i": i })));
            m.idempotency_key = Some(Arc::from(format!("key-{i}")));
        }
        if i % 3 == 0 {
            m.created_at = DateTime::from_timestamp_micros(1_000_000 * i as i64 + 7).unwrap();
        }
        m
    };
    for i in 0..6 {
        let head = f.tree.head(f.main).unwrap();
        let m = with_extras(msg(f.chat, head, &"m".repeat(i + 1)), i);
        kept.push(m.clone());
        f.tree.append(f.main, m).unwrap();
    }
    let fork = f.fork_at(kept[2].id);
    for i in 6..10 {
        let head = f.tree.head(fork).unwrap();
        let m = with_extras(msg(f.chat, head, &"f".repeat(i * 3)), i);
        doomed.push(m.id);
        f.tree.append(fork, m).unwrap();
    }
    // Messages after the fork on main again, so survivors sit on both sides of the doomed.
    for i in 10..13 {
        let head = f.tree.head(f.main).unwrap();
        let m = with_extras(msg(f.chat, head, &format!("late {i}")), i);
        kept.push(m.clone());
        f.tree.append(f.main, m).unwrap();
    }

    let mut removed = f.tree.delete_branch(fork).unwrap();
    removed.sort();
    doomed.sort();
    assert_eq!(removed, doomed);
    for want in &kept {
        let node = f.tree.node(want.id).unwrap();
        assert_eq!(&f.tree.message(node), want);
    }
    for id in &doomed {
        assert!(f.tree.node(*id).is_err());
    }
    // Nothing of the doomed stays behind.
    let with = kept.iter().filter(|m| m.model.is_some()).count();
    assert_eq!(f.tree.extras().len(), with);
    let aside = kept
        .iter()
        .filter(|m| m.id.timestamp() != Some(m.created_at))
        .count();
    assert_eq!(f.tree.rare.as_ref().unwrap().created.len(), aside);
    let restored = Tree::restore(f.tree.branch_rows(), f.main, kept.clone())
        .unwrap()
        .tree;
    assert_eq!(restored.content_bytes(), f.tree.content_bytes());
    assert_eq!(restored.text, f.tree.text);
}

#[test]
fn a_reply_shares_the_previous_replys_model_label() {
    let mut f = fixture();
    let mut model_of = Vec::new();
    for i in 0..3 {
        f.push(f.main, &format!("q{i}"));
        let head = f.tree.head(f.main).unwrap();
        let mut reply = msg(f.chat, head, "a");
        reply.role = Role::Assistant;
        reply.model = Some(Arc::from("openai/gpt"));
        model_of.push(reply.id);
        f.tree.append(f.main, reply).unwrap();
    }
    let models: Vec<_> = model_of
        .iter()
        .map(|id| f.tree.model(f.tree.node(*id).unwrap()).unwrap().clone())
        .collect();
    assert_eq!(&*models[2], "openai/gpt");
    assert!(Arc::ptr_eq(&models[0], &models[1]) && Arc::ptr_eq(&models[1], &models[2]));
}

#[test]
fn first_branch_through_finds_where_a_message_was_added() {
    let mut f = fixture();
    let a = f.push(f.main, "a");
    let side = f.fork_at(a);
    let s1 = f.push(side, "s1");
    let later = f.fork_at(s1);
    f.tree.set_active(later).unwrap();
    assert_eq!(f.tree.first_branch_through(a), Some(f.main));
    assert_eq!(f.tree.first_branch_through(s1), Some(side));
    assert_eq!(f.tree.first_branch_through(MessageId::new()), None);
}

#[test]
fn restore_resets_a_head_whose_message_is_missing() {
    let f = fixture();
    let mut b = f.tree.branch_rows().remove(0);
    b.head = Some(MessageId::new());
    let restored = Tree::restore(vec![b], f.main, Vec::new()).unwrap();
    assert_eq!(restored.reset_branches, vec![f.main]);
    assert_eq!(restored.tree.head(f.main).unwrap(), None);
}

/// A crash between the two stores' commits: the branch row moved its head to a message
/// (and its parent) that never landed; the row's fallback, stored with it, did.
#[test]
fn restore_moves_a_missing_head_back_to_its_fallback() {
    let mut f = fixture();
    f.push(f.main, "q");
    let a = f.push(f.main, "a");
    let stored: Vec<Message> = f.tree.nodes().map(|n| f.tree.message(n)).collect();
    let mut row = f.tree.branch_rows().remove(0);
    row.head = Some(MessageId::new());
    row.fallback = Some(a);
    let restored = Tree::restore(vec![row.clone()], f.main, stored.clone()).unwrap();
    assert_eq!(restored.reset_branches, vec![f.main]);
    assert_eq!(restored.tree.head(f.main).unwrap(), Some(a));
    assert!(restored.pruned.is_empty());
    // A fallback that is missing too resets the branch, as without one.
    row.fallback = Some(MessageId::new());
    let restored = Tree::restore(vec![row], f.main, stored).unwrap();
    assert_eq!(restored.tree.head(f.main).unwrap(), None);
}

/// Ids in the opposite order of the tree (every child's id below its parent's, as random ids
/// from another product can be): restore attaches every message, each under its parent, in one
/// pass over them and a walk down from what attached.
#[test]
fn restore_attaches_children_whose_ids_come_before_their_parents() {
    let chat = ChatId::new();
    let n = 5000;
    let mut ids: Vec<MessageId> = (0..n).map(|_| MessageId::new()).collect();
    ids.reverse(); // the root has the greatest id
    let messages: Vec<Message> = (0..n)
        .map(|i| {
            let mut m = msg(chat, (i > 0).then(|| ids[i - 1]), &format!("m{i}"));
            m.id = ids[i];
            m
        })
        .collect();
    // A sibling of the third message, and a message whose parent never landed.
    let mut sibling = msg(chat, Some(ids[1]), "sibling");
    sibling.id = MessageId::new();
    let orphan = msg(chat, Some(MessageId::new()), "orphan");
    let mut all = messages.clone();
    all.push(sibling.clone());
    all.push(orphan.clone());
    let main = branch(chat, "main", Some(ids[n - 1]));
    let side = branch(chat, "side", Some(sibling.id));
    let active = main.id;
    let restored = Tree::restore(vec![main.clone(), side.clone()], active, all).unwrap();
    assert_eq!(restored.pruned, vec![orphan.id]);
    let t = restored.tree;
    assert_eq!(t.message_count(), n + 1);
    let path: Vec<String> = t
        .path(main.id)
        .unwrap()
        .into_iter()
        .map(|node| t.content(node).to_owned())
        .collect();
    assert_eq!(path.len(), n);
    assert_eq!(
        (path[0].as_str(), path[n - 1].as_str()),
        ("m0", format!("m{}", n - 1).as_str())
    );
    let side_path: Vec<&str> = t
        .path(side.id)
        .unwrap()
        .into_iter()
        .map(|node| t.content(node))
        .collect();
    assert_eq!(side_path, ["m0", "m1", "sibling"]);
}
