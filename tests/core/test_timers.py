from core.timers import TimerQueue, WatermarkTracker


def test_partition_watermark_is_the_least_of_its_live_sources():
    w = WatermarkTracker(source_timeout_ms=1000)
    assert w.update(0, "a", 100, now_ms=0) == 100
    assert w.update(0, "b", 50, now_ms=10) == 50
    assert w.update(0, "a", 90, now_ms=20) == 50  # never moves back for a source
    # Both went quiet: time keeps the furthest progress known rather than move back.
    assert w.current(0, now_ms=1500) == 100
    # b stays quiet while a moves on: b no longer holds time back.
    assert w.update(0, "a", 200, now_ms=1600) == 200


def test_timer_queue_pops_due_keys_once_per_partition():
    q = TimerQueue()
    q.schedule(0, 10, "x")
    q.schedule(0, 5, "y")
    q.schedule(0, 10, "x")
    q.schedule(1, 1, "z")
    assert q.pop_due(0, 9) == ["y"]
    assert q.pop_due(0, 10) == ["x"]
    assert q.pop_due(0, 100) == [] and len(q) == 1
