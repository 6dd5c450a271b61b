"""A simple MapReduce with Ray Core (docs.ray.io, "Ray Core examples / A simple MapReduce
example"): word counts computed by map tasks that each emit one partition per reducer,
then reduce tasks that each merge their partition of every mapper."""

from collections import Counter

import runtime as ray

ray.init()

TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "the dog sleeps and the fox runs",
    "a quick dog and a lazy fox",
]

NUM_REDUCERS = 3


def partition_of(word):
    # Python's hash() of str differs between processes: use a stable one.
    return sum(word.encode()) % NUM_REDUCERS


@ray.remote(num_returns=NUM_REDUCERS)
def map_words(line):
    partitions = [[] for _ in range(NUM_REDUCERS)]
    for word in line.split():
        partitions[partition_of(word)].append((word, 1))
    return tuple(partitions)


@ray.remote
def reduce_counts(*partitions):
    counts = Counter()
    for partition in partitions:
        for word, n in partition:
            counts[word] += n
    return dict(counts)


# Each mapper returns NUM_REDUCERS refs; reducer j gets the j-th ref of every mapper.
map_outputs = [map_words.remote(line) for line in TEXT]
reducers = [reduce_counts.remote(*[outputs[j] for outputs in map_outputs])
            for j in range(NUM_REDUCERS)]

totals = {}
for partial in ray.get(reducers):
    assert not set(partial) & set(totals), "a word reached two reducers"
    totals.update(partial)

assert totals == dict(Counter(" ".join(TEXT).split()))
assert totals["the"] == 4 and totals["fox"] == 3 and totals["dog"] == 3

print("map reduce ok")
ray.shutdown()
