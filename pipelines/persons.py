"""facebeam persons: name, merge and split the persons of a cluster folder.

    facebeam persons --clusters DIR name PERSON NAME [--index NAME]
    facebeam persons --clusters DIR merge PERSON INTO_PERSON [--index NAME]
    facebeam persons --clusters DIR split PERSON --faces FACE_ID [FACE_ID ...] [--index NAME]
    facebeam persons --clusters DIR list [--top N]

A PERSON is a person id (`persons list` shows them) or the name of exactly one person.

Each change is written once: to the persons table (DIR/persons.parquet, DIR/persons/) and to
DIR/edits.jsonl, which every later `facebeam cluster` replays by face, so names, merges and
splits survive a re-cluster. With --index NAME (and --store, else chosen as `index` chooses:
Elasticsearch when configured, else the embedded index) that store's faces carry the persons' names,
so search results show them and `--person NAME` filters on them. With --shards DIR,
every store the collection DIR was loaded into (and its shards) keeps the persons' names with the
faces: search results show them and `query`/`search --person NAME` filter on them.
"""
import dataclasses
import logging
import sys

from facebeam.pipelines import jobs, options
from facebeam.transforms import persons, stores
from facebeam.transforms.errors import UserError

log = logging.getLogger(__name__)
BEAM = False


@dataclasses.dataclass(frozen=True)
class PersonsConfig:
    clusters: str
    action: str
    person_id: str = None
    name: str = None
    into: str = None
    faces: tuple = ()
    top: int = 20
    index: str = None
    shards: str = None
    es: options.EsFlags = options.EsFlags()
    store: stores.StoreChoice = stores.StoreChoice()


def build_parser():
    p = options.parser("facebeam persons", __doc__)
    sub = p.add_subparsers(dest="action", required=True)
    n = sub.add_parser("name", help="give a person a name")
    n.add_argument("person_id", metavar="PERSON", help="the person: its id (see `persons list`) or its name")
    n.add_argument("name", help="the name to give")
    m = sub.add_parser("merge", help="merge PERSON into INTO_PERSON")
    m.add_argument("person_id", metavar="PERSON", help="the person that goes away (id or name)")
    m.add_argument("into", metavar="INTO_PERSON", help="the person that keeps its id and name (id or name)")
    s = sub.add_parser("split", help="move some faces of a person into a new person")
    s.add_argument("person_id", metavar="PERSON", help="the person to take faces from (id or name)")
    s.add_argument("--faces", nargs="+", action="extend", required=True, metavar="FACE_ID",
                   help="the faces that become a new person")
    ls = sub.add_parser("list", help="print the persons table, largest first")
    ls.add_argument("--top", type=options.COUNT, default=20, help="persons to print, largest first")
    for q in (n, m, s, ls):  # each action's, so `persons list --clusters DIR` works (before the action works too)
        q.add_argument("--clusters", required=True, metavar="DIR", help="the folder `facebeam cluster --output` wrote")
    for q in (n, m, s):
        q.add_argument("--index", type=options.index_name, default=None,
                       help="also give the names to the faces of this store (see --store)")
        q.add_argument("--shards", type=options.beam_path, default=None, metavar="DIR",
                       help="also give the names to every store the collection DIR was loaded into (and its shards)")
        options.add_store(q)
        options.add_es(q)
    return p


def configure(a: options.Args, beam_args=()) -> PersonsConfig:
    action = a.action
    if action == "list":
        return PersonsConfig(clusters=a.clusters, action=action, top=a.top)
    base = {"clusters": a.clusters, "action": action, "person_id": a.person_id, "index": a.index, "shards": a.shards,
            "es": options.es_from(a), "store": options.store_from(a)}
    if action == "name":
        if not a.name.strip():  # a blank name would list as no name at all, and match every --person ""
            raise UserError("a person's name needs a visible character")
        return PersonsConfig(**base, name=a.name.strip())
    if action == "merge":
        return PersonsConfig(**base, into=a.into)
    return PersonsConfig(**base, faces=tuple(a.faces))


def run(config: PersonsConfig, pipeline=None) -> dict:
    c = config
    table = persons.read_table(c.clusters)
    if not table:
        raise UserError(f"no persons table in {c.clusters}: run `facebeam cluster --output {c.clusters}` first")
    if c.action == "list":
        top = table[:c.top]
        width = max([len("name")] + [len(r["name"] or "-") for r in top])
        print(f"{'person':<{len(top[0]['person_id'])}}  {'faces':>6}  {'name':<{width}}  a photo of them")
        for r in top:
            print(f"{r['person_id']}  {r['size']:>6}  {r['name'] or '-':<{width}}  {r['representative_image_path']}")
        # --json: the rows printed, for scripts (the count alone was all it said)
        return {"persons": len(table), "top": [{k: r[k] for k in ("person_id", "size", "name",
                                                                  "representative_image_path")} for r in top]}
    with jobs.lock_output(c.clusters):  # private, as `cluster` wrote it, and one edit at a time
        result = persons.edit(c.clusters, c.action, c.person_id, name=c.name, into=c.into, faces=c.faces)
    if c.index or c.store.given():
        named = stores.for_loading(c.store, c.es.connection, c.index or "faces")
        if not named.exists():
            named.close()
            raise UserError(f"the names are kept in {c.clusters}, but {named.describe()} holds no collection: "
                            "load it first (`facebeam index`), or name another with --index/--store")
        result["index_updated"] = stores.push_persons_to(named, persons.lookup(c.clusters))
        print(f"  {named.describe()}: {result['index_updated']} face(s) carry a person")
    if c.shards:
        result["stores_updated"] = stores.push_persons(c.shards, c.es.connection, persons.lookup(c.clusters))
        for line in result["stores_updated"]:
            print(f"  {line}")
    log.info("persons %s: %s", c.action, result)
    return result


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    jobs.entry(main)
