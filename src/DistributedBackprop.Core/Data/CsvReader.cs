using System.Globalization;
using System.IO.Compression;
using System.Text;

namespace DistributedBackprop.Data;

/// <summary>How to read a CSV file.</summary>
public sealed record CsvOptions
{
    /// <summary>
    /// The label column: a header name, or an integer index (0-based; negative counts from the end, −1 is
    /// the last column). Null: the last column.
    /// </summary>
    public string? LabelColumn { get; init; }

    /// <summary>
    /// The class list labels must belong to (test data, evaluation). Null: classes are collected in the
    /// order they first appear.
    /// </summary>
    public IReadOnlyList<string>? Classes { get; init; }

    /// <summary>
    /// With <see cref="ExpectedFeatures"/>: a file with exactly that many columns has no label column
    /// (prediction input). Otherwise the label column is required.
    /// </summary>
    public bool LabelOptional { get; init; }

    /// <summary>The number of features the model expects, checked against the file.</summary>
    public int? ExpectedFeatures { get; init; }

    /// <summary>Whether the first row names the columns (<see cref="CsvHeader.Auto"/>: decided from the row itself).</summary>
    public CsvHeader Header { get; init; } = CsvHeader.Auto;
}

/// <summary>Does a CSV file's first row name its columns?</summary>
public enum CsvHeader
{
    /// <summary>
    /// A header unless every field of the first row is a number. A first row whose features are numbers but
    /// whose label is not could be either (a header with numeric column names, or a header-less file with
    /// text labels): that is refused with a request to say which, never guessed.
    /// </summary>
    Auto,

    /// <summary>The first row is a header.</summary>
    Yes,

    /// <summary>No header: every row is data; columns are named "column 1", "column 2", … in messages.</summary>
    No,
}

/// <summary>
/// Reads a CSV file with or without a header row (<see cref="CsvHeader"/>; optionally gzip-compressed, detected by its magic bytes):
/// numeric features, one label column whose values may be any strings. RFC 4180 quoting is honoured.
/// Completely empty lines are skipped. Every problem is reported as file:line:column.
/// </summary>
public static class CsvReader
{
    public static Dataset Read(string path, CsvOptions options)
    {
        using Stream stream = DataFiles.OpenMaybeGzip(path);
        using var reader = new StreamReader(stream);
        return Read(reader, path, options);
    }

    /// <summary>
    /// The longest line read: a line is held whole before it is split, and a small gzip file can expand to a
    /// line of a billion characters. 16 M characters is a row of a million features with room to spare.
    /// </summary>
    public const int MaxLineLength = 1 << 24;

    public static Dataset Read(TextReader source, string file, CsvOptions options)
    {
        var reader = new LineReader(source, file);
        string? header;
        try
        {
            header = reader.ReadLine(1);
        }
        catch (InvalidDataException e)
        {
            throw DataException.InFile(file, $"corrupt gzip stream ({e.Message})");
        }
        if (header is null)
        {
            throw DataException.InFile(file, "empty file: expected at least one data row");
        }
        var fields = new List<string>();
        SplitFields(header, fields, file, 1);
        string[] names = fields.Select(f => f.Trim()).ToArray();
        int columns = names.Length;
        // A first row that is data is read again below as line 1, after the columns are known.
        bool headerRow = HasHeader(options, names, file);
        string? firstDataRow = headerRow ? null : header;
        if (firstDataRow is not null)
        {
            names = Enumerable.Range(1, columns).Select(c => string.Create(CultureInfo.InvariantCulture, $"column {c}")).ToArray();
        }

        int labelIndex;
        bool hasLabel = true;
        if (options.LabelOptional && options.ExpectedFeatures == columns)
        {
            hasLabel = false;
            labelIndex = -1;
        }
        else
        {
            labelIndex = ResolveLabelColumn(options.LabelColumn, names, file);
        }
        int features = hasLabel ? columns - 1 : columns;
        if (features < 1)
        {
            throw DataException.AtLine(file, 1, $"the {(headerRow ? "header" : "first row")} has {columns} column(s); at least one feature column besides the label is needed");
        }
        if (options.ExpectedFeatures is int expected && expected != features)
        {
            throw DataException.AtLine(file, 1, $"{features} feature columns, the model expects {expected}");
        }

        var classIndex = new Dictionary<string, int>(StringComparer.Ordinal);
        var classes = new List<string>();
        if (options.Classes is not null)
        {
            foreach (string name in options.Classes)
            {
                classIndex[name] = classes.Count;
                classes.Add(name);
            }
        }

        var values = new List<float>();
        var labels = new List<int>();
        long lineNumber = firstDataRow is null ? 1 : 0;
        string? line;
        while (true)
        {
            try
            {
                line = firstDataRow ?? reader.ReadLine(lineNumber + 1);
                firstDataRow = null;
            }
            catch (InvalidDataException e)
            {
                throw DataException.AtLine(file, lineNumber + 1, $"corrupt or truncated gzip stream ({e.Message})");
            }
            if (line is null)
            {
                break;
            }
            lineNumber++;
            if (line.Length == 0 || (line.Length == 1 && line[0] == '\r'))
            {
                continue;
            }
            SplitFields(line, fields, file, lineNumber);
            if (fields.Count != columns)
            {
                throw DataException.AtLine(file, lineNumber, $"{fields.Count} fields, the {(headerRow ? "header" : "first row")} has {columns}");
            }
            for (int c = 0; c < columns; c++)
            {
                string cell = fields[c];
                if (c == labelIndex)
                {
                    string label = cell.Trim();
                    if (label.Length == 0)
                    {
                        throw DataException.At(file, lineNumber, c + 1, $"empty label in column '{names[c]}'");
                    }
                    if (!classIndex.TryGetValue(label, out int index))
                    {
                        if (options.Classes is not null)
                        {
                            throw DataException.At(file, lineNumber, c + 1,
                                $"label '{label}' is not in the class list ({string.Join(", ", options.Classes)})");
                        }
                        index = classes.Count;
                        classIndex[label] = index;
                        classes.Add(label);
                    }
                    labels.Add(index);
                    continue;
                }
                ReadOnlySpan<char> text = cell.AsSpan().Trim();
                if (text.IsEmpty)
                {
                    throw DataException.At(file, lineNumber, c + 1, $"empty cell in feature column '{names[c]}'");
                }
                if (!float.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out float value))
                {
                    throw DataException.At(file, lineNumber, c + 1, $"'{cell.Trim()}' in column '{names[c]}' is not a number");
                }
                if (!float.IsFinite(value))
                {
                    throw DataException.At(file, lineNumber, c + 1, $"'{cell.Trim()}' in column '{names[c]}' is not a finite number (NaN and infinity are not allowed)");
                }
                values.Add(value);
            }
            if (!hasLabel)
            {
                labels.Add(-1);
            }
        }
        if (labels.Count == 0)
        {
            throw DataException.InFile(file, "no data rows after the header");
        }
        return new Dataset(file, features, values.ToArray(), labels.ToArray(), classes, DataKind.Table);
    }

    /// <summary>Whether the first row (split into <paramref name="first"/>) is a header, by <see cref="CsvOptions.Header"/>.</summary>
    private static bool HasHeader(CsvOptions options, string[] first, string file)
    {
        if (options.Header != CsvHeader.Auto)
        {
            return options.Header == CsvHeader.Yes;
        }
        bool[] numeric = first.Select(f => double.TryParse(f, NumberStyles.Float, CultureInfo.InvariantCulture, out _)).ToArray();
        if (numeric.All(n => n))
        {
            // All numbers: data. A label given by a name (not an index) that is one of these numbers says the
            // row names the columns after all; a name that is not among them cannot be found in a file without
            // a header. A label given as an index is an index: its text matching a value decides nothing.
            string? label = options.LabelColumn?.Trim();
            if (string.IsNullOrEmpty(label) || int.TryParse(label, NumberStyles.Integer, CultureInfo.InvariantCulture, out _))
            {
                return false;
            }
            if (Array.IndexOf(first, label) < 0)
            {
                throw DataException.AtLine(file, 1, $"the first row is all numbers, so it reads as data, not a header naming the label column '{label}'; give --label the 0-based column index, or --header yes if it is a header");
            }
            return true;
        }
        // Numbers everywhere but one column: the label column's value, or a header with numeric names?
        int words = numeric.Count(n => !n);
        if (words == 1 && first.Length >= 2)
        {
            throw DataException.AtLine(file, 1, $"cannot tell whether the first row is a header or data (every field is a number but '{first[Array.IndexOf(numeric, false)]}'); say --header yes or --header no");
        }
        return true;
    }

    private static int ResolveLabelColumn(string? spec, string[] names, string file)
    {
        if (string.IsNullOrWhiteSpace(spec))
        {
            return names.Length - 1;
        }
        int byName = Array.FindIndex(names, n => string.Equals(n, spec.Trim(), StringComparison.Ordinal));
        if (byName >= 0)
        {
            int again = Array.FindIndex(names, byName + 1, n => string.Equals(n, spec.Trim(), StringComparison.Ordinal));
            if (again >= 0)
            {
                // Picking one of two columns with the label's name would be a silent guess.
                throw DataException.AtLine(file, 1, $"the label column '{spec.Trim()}' appears twice in the header (columns {byName + 1} and {again + 1}); rename one, or give --label the 0-based index");
            }
            return byName;
        }
        if (int.TryParse(spec, NumberStyles.Integer, CultureInfo.InvariantCulture, out int index))
        {
            int resolved = index < 0 ? names.Length + index : index;
            if (resolved >= 0 && resolved < names.Length)
            {
                return resolved;
            }
            throw DataException.AtLine(file, 1, $"label column index {index} is outside the {names.Length} columns");
        }
        throw DataException.AtLine(file, 1, $"no column named '{spec}' (columns: {Abbreviate(names)})");
    }

    private static string Abbreviate(string[] names) =>
        names.Length <= 8 ? string.Join(", ", names) : string.Join(", ", names.Take(4)) + ", …, " + string.Join(", ", names.TakeLast(2));

    /// <summary>Splits one line into fields, honouring double quotes ("" inside quotes is a quote).</summary>
    private static void SplitFields(string line, List<string> into, string file, long lineNumber)
    {
        into.Clear();
        if (line.EndsWith('\r'))
        {
            line = line[..^1];
        }
        if (line.IndexOf('"') < 0)
        {
            int start = 0;
            while (true)
            {
                int comma = line.IndexOf(',', start);
                if (comma < 0)
                {
                    into.Add(line[start..]);
                    return;
                }
                into.Add(line[start..comma]);
                start = comma + 1;
            }
        }
        var field = new System.Text.StringBuilder();
        bool quoted = false;
        for (int i = 0; i < line.Length; i++)
        {
            char ch = line[i];
            if (quoted)
            {
                if (ch == '"')
                {
                    if (i + 1 < line.Length && line[i + 1] == '"')
                    {
                        field.Append('"');
                        i++;
                    }
                    else
                    {
                        quoted = false;
                    }
                }
                else
                {
                    field.Append(ch);
                }
            }
            else if (ch == '"')
            {
                quoted = true;
            }
            else if (ch == ',')
            {
                into.Add(field.ToString());
                field.Clear();
            }
            else
            {
                field.Append(ch);
            }
        }
        if (quoted)
        {
            throw DataException.AtLine(file, lineNumber, "unterminated quoted field");
        }
        into.Add(field.ToString());
    }

    /// <summary>
    /// TextReader.ReadLine (a line ends at \n, \r\n or \r) that refuses a line longer than <see cref="MaxLineLength"/>
    /// before holding it, naming the file and line.
    /// </summary>
    private sealed class LineReader(TextReader reader, string file)
    {
        private readonly char[] _buffer = new char[1 << 16];
        private readonly StringBuilder _line = new();
        private int _start, _end;

        public string? ReadLine(long lineNumber)
        {
            _line.Clear();
            while (true)
            {
                if (_start == _end && !Fill())
                {
                    return _line.Length > 0 ? _line.ToString() : null;
                }
                int end = _buffer.AsSpan(_start, _end - _start).IndexOfAny('\r', '\n');
                int take = end < 0 ? _end - _start : end;
                if (_line.Length + (long)take > MaxLineLength)
                {
                    throw DataException.AtLine(file, lineNumber, string.Create(CultureInfo.InvariantCulture, $"line longer than {MaxLineLength:N0} characters"));
                }
                _line.Append(_buffer, _start, take);
                _start += take;
                if (end >= 0)
                {
                    if (_buffer[_start++] == '\r' && (_start < _end || Fill()) && _buffer[_start] == '\n')
                    {
                        _start++;
                    }
                    return _line.ToString();
                }
            }
        }

        private bool Fill()
        {
            _start = 0;
            _end = reader.Read(_buffer, 0, _buffer.Length);
            return _end > 0;
        }
    }
}
