"""Every limit an upload must respect, in one place. docs/limits.md lists these values
(tests/test_docs.py checks both ways); `tests/test_upload.py` exceeds each one. Exceeding any
of them refuses the whole upload with a DataError (nothing is extracted or written), except
where noted."""

MiB = 1024 * 1024

# --- the archive (checked from the ZIP's central directory, before anything is read) ---
MAX_ARCHIVE_BYTES = 200 * MiB         # size of the uploaded file (= server.maxUploadSize)
MAX_MEMBERS = 100_000                 # entries in the archive / files in a folder
MAX_FILE_BYTES = 64 * MiB             # uncompressed size of any one file
MAX_TOTAL_BYTES = 1024 * MiB          # uncompressed size of all files together
MAX_COMPRESSION_RATIO = 200           # uncompressed / compressed, whole archive and any one
RATIO_CHECK_MIN_BYTES = 1 * MiB       # ... file bigger than this (tiny files compress well)

# --- names ---
MAX_NAME_CHARS = 255                  # one file or folder name, or one label in labels.csv
MAX_PATH_CHARS = 1024                 # a whole path inside the archive

# --- images ---
MAX_PIXELS = 40_000_000               # width × height of one image, read from its header
                                      # (also Pillow's MAX_IMAGE_PIXELS decompression-bomb guard)
MAX_SIDE = 64                         # images are resized so that no side exceeds this

# --- classes ---
MIN_CLASSES = 2
MAX_CLASSES = 100
MIN_IMAGES_PER_CLASS = 2
