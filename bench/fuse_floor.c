/* The floor of a FUSE daemon on this machine, in C: a read-only filesystem over the
 * regular files of ROOT/img, held in memory and served as they are (no cache of its
 * own, no network, no checks; the kernel's page cache is kept across opens), with the
 * kernel options the mount uses (entry and attribute timeouts, max_read and readahead,
 * default_permissions). bench/fuse.py compiles it when gcc and libfuse 3's headers
 * (Debian's libfuse3-dev) are there and measures it beside the mount, so the mount's
 * rate can be read against what libfuse and the kernel's round trips cost with no
 * Python at all.
 *
 *   gcc -O2 -o fuse_floor fuse_floor.c $(pkg-config --cflags --libs fuse3)
 *   ./fuse_floor ROOT MOUNTPOINT TIMEOUT MAX_READ [libfuse options, e.g. -f -s]
 */
#define FUSE_USE_VERSION 31
#include <dirent.h>
#include <errno.h>
#include <fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static double timeout;              /* entry and attribute timeouts, seconds */
static unsigned max_read;           /* the largest read (and readahead), bytes */

struct held { char *path; char *data; size_t size; };
static struct held *files;
static size_t n_files;

static int by_path(const void *a, const void *b)
{
    return strcmp(((const struct held *)a)->path, ((const struct held *)b)->path);
}

static struct held *find(const char *path)
{
    struct held key = { .path = (char *)path };
    return bsearch(&key, files, n_files, sizeof *files, by_path);
}

static int load(const char *root)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/img", root);
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    size_t cap = 1024;
    files = malloc(cap * sizeof *files);
    if (!files)
        return closedir(d), -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char full[8192];
        struct stat st;
        snprintf(full, sizeof full, "%s/%s", dir, e->d_name);
        if (stat(full, &st) || !S_ISREG(st.st_mode))     /* regular files only */
            continue;
        FILE *f = fopen(full, "rb");
        if (!f)
            continue;
        size_t size = (size_t)st.st_size;
        char *data = malloc(size ? size : 1);
        if (!data || fread(data, 1, size, f) != size) {
            fclose(f);
            free(data);
            continue;
        }
        fclose(f);
        if (n_files == cap) {
            struct held *more = realloc(files, cap * 2 * sizeof *files);
            if (!more)
                return closedir(d), -1;
            files = more;
            cap *= 2;
        }
        size_t plen = strlen(e->d_name) + 6;
        files[n_files].path = malloc(plen);
        if (!files[n_files].path)
            return closedir(d), -1;
        snprintf(files[n_files].path, plen, "/img/%s", e->d_name);
        files[n_files].data = data;
        files[n_files].size = size;
        n_files++;
    }
    closedir(d);
    qsort(files, n_files, sizeof *files, by_path);
    return 0;
}

static int floor_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    (void)fi;
    memset(st, 0, sizeof *st);
    if (!strcmp(path, "/") || !strcmp(path, "/img")) {
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
        return 0;
    }
    struct held *h = find(path);
    if (!h)
        return -ENOENT;
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_size = h->size;
    return 0;
}

static int floor_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                         struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    (void)off; (void)fi; (void)flags;
    fill(buf, ".", NULL, 0, 0);
    fill(buf, "..", NULL, 0, 0);
    if (!strcmp(path, "/"))
        return fill(buf, "img", NULL, 0, 0), 0;
    if (strcmp(path, "/img"))
        return -ENOENT;
    for (size_t i = 0; i < n_files; i++)
        fill(buf, files[i].path + 5, NULL, 0, 0);
    return 0;
}

static int floor_open(const char *path, struct fuse_file_info *fi)
{
    struct held *h = find(path);
    if (!h)
        return -ENOENT;
    fi->fh = (uint64_t)(h - files);
    fi->keep_cache = 1;             /* the bytes never change: pages kept across opens */
    return 0;
}

static int floor_read(const char *path, char *buf, size_t size, off_t off,
                      struct fuse_file_info *fi)
{
    (void)path;
    struct held *h = &files[fi->fh];
    if ((size_t)off >= h->size)
        return 0;
    if (size > h->size - off)
        size = h->size - off;
    memcpy(buf, h->data + off, size);
    return (int)size;
}

static void *floor_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    cfg->entry_timeout = cfg->attr_timeout = timeout;
    cfg->negative_timeout = timeout < 1.0 ? timeout : 1.0;
    conn->max_read = conn->max_readahead = max_read;
    return NULL;
}

static const struct fuse_operations ops = {
    .init = floor_init,
    .getattr = floor_getattr,
    .readdir = floor_readdir,
    .open = floor_open,
    .read = floor_read,
};

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s ROOT MOUNTPOINT TIMEOUT MAX_READ [libfuse options]\n",
                argv[0]);
        return 2;
    }
    timeout = atof(argv[3]);
    max_read = (unsigned)strtoul(argv[4], NULL, 10);
    if (load(argv[1])) {
        perror(argv[1]);
        return 1;
    }
    /* libfuse sees: prog MOUNTPOINT -o max_read=N [options] */
    char opt[64];
    snprintf(opt, sizeof opt, "max_read=%u", max_read);
    char **args = malloc((argc + 1) * sizeof *args);
    if (!args)
        return 1;
    int n = 0;
    args[n++] = argv[0];
    args[n++] = argv[2];
    args[n++] = "-o";
    args[n++] = opt;
    for (int i = 5; i < argc; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    return fuse_main(n, args, &ops, NULL);
}
