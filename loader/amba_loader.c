/*
 * $libdir/amba: the loader. Released amba 0.1.0 and 0.2.0 bound their C functions to
 * MODULE_PATHNAME = 'amba', so every database installed at one of those versions calls
 * this file, whichever package is installed now. The loader exports every symbol those
 * versions' scripts name (symbols.h, generated from sql/amba--*.sql by loader/build.sh)
 * and forwards each call to the library of the version the database runs:
 * $libdir/amba-<extversion>, so a database keeps the behaviour of its own version until
 * its ALTER EXTENSION amba UPDATE. Releases from 0.3.0 on bind to amba-<version> directly.
 *
 * Written in C, not Rust: it sits between fmgr and the real library, and every error the
 * real library raises longjmps through it; in C that is the native model (no frames to
 * unwind), and the headers give the catalog and syscache layout of each PostgreSQL major.
 *
 * Per backend: the extension's version is read once (pg_extension, by index) and the
 * target of each symbol resolved at its first call; both are forgotten on any pg_proc
 * invalidation, which every change of version brings (CREATE/DROP EXTENSION, and
 * ALTER EXTENSION UPDATE, whose scripts replace every C function), including a rollback.
 * A call then costs one flag test and one indirect call more than calling the library.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/skey.h"
#include "access/table.h"
#include "catalog/pg_extension.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#ifdef PG_MODULE_MAGIC_EXT
PG_MODULE_MAGIC_EXT(.name = "amba (loader)");
#else
PG_MODULE_MAGIC;
#endif

void		_PG_init(void);

/* One index per exported symbol. */
enum
{
#define AMBA_SYMBOL(name) SYM_##name,
#include "symbols.h"
#undef AMBA_SYMBOL
	N_SYMBOLS
};

static const char *const symbol_names[N_SYMBOLS] = {
#define AMBA_SYMBOL(name) #name,
#include "symbols.h"
#undef AMBA_SYMBOL
};

/* The version the targets below belong to, valid while `version_known`. */
static bool version_known = false;
static char version[NAMEDATALEN];
static PGFunction targets[N_SYMBOLS];

static void
forget_version(Datum arg, int cacheid, uint32 hashvalue)
{
	version_known = false;
}

void
_PG_init(void)
{
	CacheRegisterSyscacheCallback(PROCOID, forget_version, (Datum) 0);
}

/* Reads extversion of extension amba in this database into `version`. */
static void
read_version(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		isnull;
	Datum		d;
	char	   *v;
	const char *c;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("amba"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (!HeapTupleIsValid(tuple))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("extension \"amba\" is not installed in this database"),
				 errdetail("Library \"amba\" serves the functions of extension amba only.")));
	d = heap_getattr(tuple, Anum_pg_extension_extversion, RelationGetDescr(rel), &isnull);
	if (isnull)
		elog(ERROR, "extension \"amba\" has no version");
	v = TextDatumGetCString(d);
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	/* The version becomes part of a file name: [0-9A-Za-z._-] only. */
	if (strlen(v) >= sizeof(version) || v[0] == '\0' || v[0] == '.')
		elog(ERROR, "extension \"amba\" has an unexpected version \"%s\"", v);
	for (c = v; *c; c++)
		if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') ||
			  (*c >= 'A' && *c <= 'Z') || *c == '.' || *c == '_' || *c == '-'))
			elog(ERROR, "extension \"amba\" has an unexpected version \"%s\"", v);

	if (strcmp(v, version) != 0)
	{
		strlcpy(version, v, sizeof(version));
		memset(targets, 0, sizeof(targets));
	}
	pfree(v);
	version_known = true;
}

static pg_noinline PGFunction
resolve(int i)
{
	char		library[MAXPGPATH];
	void	   *handle;
	PGFunction	f;

	if (!version_known)
		read_version();
	if (targets[i] == NULL)
	{
		snprintf(library, sizeof(library), "$libdir/amba-%s", version);
		f = (PGFunction) load_external_function(library, symbol_names[i], true, &handle);
		/* As fmgr checks the loader's: pg_finfo_<name> exists and says version 1. */
		(void) fetch_finfo_record(handle, symbol_names[i]);
		targets[i] = f;
	}
	return targets[i];
}

#define AMBA_SYMBOL(name) \
	PG_FUNCTION_INFO_V1(name); \
	Datum \
	name(PG_FUNCTION_ARGS) \
	{ \
		PGFunction	f = targets[SYM_##name]; \
		if (unlikely(!version_known || f == NULL)) \
			f = resolve(SYM_##name); \
		return f(fcinfo); \
	}
#include "symbols.h"
#undef AMBA_SYMBOL
