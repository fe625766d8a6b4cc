"""The internal wheel index: a static tree that any web server or object store can host,
plus a small server that adds PEP 691 content negotiation.

On disk (default wheels/index/):

    files/<project>/<wheel>              the wheels, written once, never changed
    files/<project>/<wheel>.metadata     PEP 658: the wheel's METADATA, beside it
    generations/<NNNNNN>/index-state.json  the index's own facts (store.py)
    generations/<NNNNNN>/simple/...      pages generated from the files + that state
    current -> generations/<NNNNNN>      swapped atomically by every change
    simple -> current/simple             what clients read: /simple/ and /simple/<project>/
    index-state.json -> current/index-state.json
    .lock                                one writer at a time (publish, mirror, yank)

Each page exists twice: index.html (PEP 503 + PEP 592/629/658/714) and index.json
(PEP 691 with the PEP 700 keys). A change writes a whole new generation and then
swaps one symlink, so a reader sees either the old index or the new one, never a page
listing a file that is not there yet; an interrupted change leaves `current` as it was.

Modules: layout (pages from records), store (state, lock, generations), publish
(verify gate, immutability, mirroring), yank, listing, serve, upload; cli_* are the
command-line entry points registered in vllm_wheels.commands.COMMANDS.
"""
