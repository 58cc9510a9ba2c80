from recs.contracts import Click
from udfs.counts import ClickCount


def test_click_count_keeps_the_newest_event_time():
    c = ClickCount()
    for ts in (5, 9, 7):
        c = c.add(Click("u1", "i1", ts))
    assert c == ClickCount(clicks=3, last_ts=9)
