//! Question/answer pairs over a branch's path, as seeds 000–002 count conversations.
//!
//! A path is grouped into pairs from the root: a user (or system) message opens a pair, and an
//! assistant message directly after it is that pair's response. An assistant message that
//! follows another assistant message, or starts the path, opens a pair of its own with no
//! question. So every message belongs to exactly one pair, and pair `i` of a branch is the same
//! pair for every branch that shares the path up to it.

use arbor_actors::model::{MessageId, Role};
use arbor_actors::views::MessageView;

/// One pair: at least one of the two is present.
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    pub question: Option<&'a MessageView>,
    pub response: Option<&'a MessageView>,
}

impl<'a> Pair<'a> {
    /// The pair's last message: forking "at" a pair keeps all of it.
    pub fn last(&self) -> &'a MessageView {
        match (self.response, self.question) {
            (Some(last), _) | (None, Some(last)) => last,
            (None, None) => unreachable!("a pair holds a message"),
        }
    }

    pub fn first(&self) -> &'a MessageView {
        match (self.question, self.response) {
            (Some(first), _) | (None, Some(first)) => first,
            (None, None) => unreachable!("a pair holds a message"),
        }
    }
}

/// Does `message` (after `previous` on the path) open a new pair?
fn opens_pair(previous: Option<Role>, message: Role) -> bool {
    message != Role::Assistant || !matches!(previous, Some(Role::User | Role::System))
}

/// The pairs of a path (root first).
pub fn pairs(path: &[MessageView]) -> Vec<Pair<'_>> {
    let mut pairs: Vec<Pair<'_>> = Vec::with_capacity(path.len() / 2 + 1);
    let mut previous = None;
    for message in path {
        if opens_pair(previous, message.role) {
            pairs.push(match message.role {
                Role::Assistant => Pair {
                    question: None,
                    response: Some(message),
                },
                _ => Pair {
                    question: Some(message),
                    response: None,
                },
            });
        } else if let Some(open) = pairs.last_mut() {
            open.response = Some(message);
        }
        previous = Some(message.role);
    }
    pairs
}

/// The 0-based pair holding `message`, when it is on the path.
pub fn pair_index(path: &[MessageView], message: MessageId) -> Option<usize> {
    pairs(path).iter().position(|p| {
        p.question.is_some_and(|q| q.id == message) || p.response.is_some_and(|r| r.id == message)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arbor_actors::model::ChatId;
    use std::sync::Arc;

    fn path(roles: &[Role]) -> Vec<MessageView> {
        let chat = ChatId::new();
        let mut parent = None;
        roles
            .iter()
            .map(|&role| {
                let id = MessageId::new();
                let view = MessageView {
                    id,
                    chat_id: chat,
                    parent_id: parent,
                    role,
                    content: Arc::from("x"),
                    model: None,
                    metadata: None,
                    created_at: chrono::Utc::now(),
                    sibling_index: 0,
                    sibling_count: 1,
                    children_count: 0,
                    feedback: None,
                };
                parent = Some(id);
                view
            })
            .collect()
    }

    fn shape(path: &[MessageView]) -> Vec<(bool, bool)> {
        pairs(path)
            .iter()
            .map(|p| (p.question.is_some(), p.response.is_some()))
            .collect()
    }

    #[test]
    fn alternating_messages_pair_up() {
        use Role::{Assistant as A, User as U};
        let p = path(&[U, A, U, A, U]);
        assert_eq!(shape(&p), [(true, true), (true, true), (true, false)]);
        assert_eq!(pairs(&p)[1].last().id, p[3].id);
        assert_eq!(pairs(&p)[2].last().id, p[4].id);
        assert_eq!(pair_index(&p, p[3].id), Some(1));
        assert_eq!(pair_index(&p, p[2].id), Some(1));
        assert_eq!(pair_index(&p, p[4].id), Some(2));
    }

    #[test]
    fn unanswered_questions_and_lone_answers_are_pairs_of_their_own() {
        use Role::{Assistant as A, System as S, User as U};
        let p = path(&[A, U, U, A, A, S, A]);
        assert_eq!(
            shape(&p),
            [
                (false, true),
                (true, false),
                (true, true),
                (false, true),
                (true, true)
            ]
        );
        assert_eq!(pairs(&p)[0].first().id, p[0].id);
        assert_eq!(pair_index(&p, p[4].id), Some(3));
        assert!(pair_index(&p, MessageId::new()).is_none());
        assert!(pairs(&[]).is_empty());
    }
}
