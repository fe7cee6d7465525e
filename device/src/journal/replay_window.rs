//! The requests a crashed daemon answered whose used entries the guest may not have seen: the
//! frontend restarts the request ring at the used index it finds in guest memory, so those
//! chains come again. They are answered with what the first daemon answered, not applied a
//! second time.

use std::collections::VecDeque;

use super::record::Answer;

/// At most this many answers are kept (the largest ring the daemon accepts).
pub const MAX_ANSWERS: usize = 32_768;

/// Answers by avail position, oldest first.
#[derive(Debug, Default)]
pub struct ReplayWindow {
    answers: VecDeque<Answer>,
}

impl ReplayWindow {
    /// Remembers `a`; the oldest answer goes when the window is full.
    pub fn push(&mut self, a: Answer) {
        if self.answers.len() == MAX_ANSWERS {
            self.answers.pop_front();
        }
        self.answers.push_back(a);
    }

    /// Keeps the answers of positions in `[from, to)` (ring arithmetic): the ring resumes at
    /// `from`, and `to` is where the first daemon stopped.
    pub fn keep_between(&mut self, from: u16, to: u16) {
        let span = to.wrapping_sub(from);
        self.answers.retain(|a| a.pos.wrapping_sub(from) < span);
    }

    /// The answer of the chain `head` at `pos`, taken out of the window.
    pub fn take(&mut self, pos: u16, head: u16) -> Option<Answer> {
        let i = self.answers.iter().position(|a| a.pos == pos)?;
        let a = self.answers.remove(i)?;
        (a.head == head).then_some(a)
    }

    /// Forgets every answer.
    pub fn clear(&mut self) {
        self.answers.clear();
    }

    /// The waiting answers, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Answer> {
        self.answers.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(pos: u16, head: u16) -> Answer {
        Answer {
            pos,
            head,
            used: 4,
            status: 0,
        }
    }

    #[test]
    fn only_the_unseen_positions_are_kept_across_a_wrap() {
        let mut w = ReplayWindow::default();
        for p in [0xfffc, 0xfffd, 0xfffe, 0xffff, 0, 1] {
            w.push(a(p, p % 64));
        }
        w.keep_between(0xfffe, 1);
        let kept: Vec<u16> = w.iter().map(|x| x.pos).collect();
        assert_eq!(kept, [0xfffe, 0xffff, 0]);
        assert_eq!(w.take(0xffff, 0xffff % 64), Some(a(0xffff, 63)));
        assert_eq!(w.take(0xffff, 63), None, "taken once");
        assert_eq!(
            w.take(0, 5),
            None,
            "another chain at that position is served anew"
        );
        assert_eq!(w.iter().count(), 1);
    }

    #[test]
    fn the_window_is_bounded() {
        let mut w = ReplayWindow::default();
        for i in 0..MAX_ANSWERS + 10 {
            w.push(a(u16::try_from(i % 65_536).unwrap(), 0));
        }
        assert_eq!(w.iter().count(), MAX_ANSWERS);
        assert_eq!(w.iter().next().unwrap().pos, 10);
    }
}
