use super::*;

fn conn(i: u32) -> ConnId {
    ConnId::for_tests(i, 1)
}

#[test]
fn memory_comes_back_after_many_publishers_and_a_burst_of_requests() {
    let mut p = Publishers::new(1 << 20);
    for i in 0..2048 {
        p.open(conn(i));
    }
    let flooded = p.conns.capacity();
    for i in 1..2048 {
        assert!(p.close(conn(i)));
    }
    p.shrink_if_sparse();
    assert!(p.conns.capacity() < flooded / 8, "{}", p.conns.capacity());
    assert!(p.contains(conn(0)));
    // A burst of pipelined requests, answered: the queue's room goes too.
    for ticket in 0..OUTSTANDING_MAX as u64 {
        p.expect(conn(0), ticket);
    }
    assert_eq!(p.outstanding(conn(0)), OUTSTANDING_MAX);
    for ticket in 0..OUTSTANDING_MAX as u64 {
        p.fill(conn(0), ticket, vec![1]);
        assert_eq!(p.ready_front(conn(0)).as_deref(), Some(&[1u8][..]));
        p.pop_front(conn(0));
    }
    assert_eq!(p.outstanding(conn(0)), 0);
    assert!(p.conns[&conn(0)].outstanding.capacity() <= OUTSTANDING_KEPT_MAX);
}
