-- The best match per category: one filtered kNN per category, as a LATERAL join.
-- The filter is applied before ranking, so each category gets its own nearest row.
WITH probe AS (SELECT vector AS q FROM omen_scan('docs') WHERE id = 2),
     categories AS (SELECT DISTINCT category FROM omen_scan('docs'))
SELECT c.category, hit.id, hit.title, round(hit._distance, 4) AS distance
FROM categories AS c, probe,
     LATERAL omen_knn('docs', probe.q, 1, filter := 'category = ''' || c.category || '''') AS hit
ORDER BY c.category;
